"""Low-pass projection of image-shaped updates, for IDC's ``distill.update_lowpass`` (docs/Methods_IDC.md)."""
import torch.nn.functional as F


def lowpass_update(delta, factor):
    """Average ``delta`` over non-overlapping s x s cells and interpolate back bilinearly (``align_corners=False``).

    Args:
        delta (Tensor): (n, c, h, w), any range (e.g. one optimiser step of x_hat).
        factor (int): The cell size s >= 1 dividing h and w; 1 returns ``delta`` unchanged.

    Returns:
        Tensor: (n, c, h, w), same dtype and device.

    Raises:
        ValueError: If ``factor`` is below 1 or does not divide h and w.
    """
    factor = int(factor)
    h, w = delta.shape[-2:]
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f'lowpass_update: the cell size {factor} must be >= 1 and divide the patch size {h} x {w}')
    if factor == 1:
        return delta
    coarse = F.avg_pool2d(delta, factor)
    return F.interpolate(coarse, size=(h, w), mode='bilinear', align_corners=False)

"""A low-pass projection of image-shaped updates: average over s x s cells, bilinear interpolation back.

Used by IDC's ``distill.update_lowpass`` (``models/idc_model.py``) to keep x_hat's change from its start free of the
near-white, per-pixel noise that Adam's steps add to LR patches (docs/Benchmark.md, the data-bound preset).
"""
import torch.nn.functional as F


def lowpass_update(delta, factor):
    """Average ``delta`` over non-overlapping ``factor`` x ``factor`` cells and interpolate it back bilinearly.

    The result lies in the space of bilinear interpolants of an (h / s, w / s) grid (``align_corners=False``, edges
    replicated), so it holds no content above 1 / s of the Nyquist frequency of the input grid (up to the
    interpolation's own ripple). ``factor`` 1 returns ``delta`` unchanged.

    Args:
        delta (Tensor): (n, c, h, w), any value range (a change of an image, e.g. one optimiser step of x_hat).
        factor (int): The cell size s >= 1; h and w must be multiples of it.

    Returns:
        Tensor: (n, c, h, w), same dtype and device.

    Raises:
        ValueError: ``factor`` below 1, or h / w not multiples of it.
    """
    factor = int(factor)
    h, w = delta.shape[-2:]
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f'lowpass_update: the cell size {factor} must be >= 1 and divide the patch size {h} x {w}')
    if factor == 1:
        return delta
    coarse = F.avg_pool2d(delta, factor)
    return F.interpolate(coarse, size=(h, w), mode='bilinear', align_corners=False)

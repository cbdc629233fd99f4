"""PSNR / SSIM evaluation of a super-resolution network on an image folder, following BasicSR's conventions."""
import numpy as np
import os.path as osp
import torch

from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import img2tensor, tensor2img
from basicsr.utils.matlab_functions import imresize
from basicsr_distill.utils import image_io

# the evaluation has always listed PPM files too (the training folders do not): kept as it was
IMG_EXTENSIONS = image_io.IMG_EXTENSIONS + ('.ppm', )


class BicubicSR(torch.nn.Module):
    """MATLAB-style bicubic up-sampling (BasicSR's ``imresize``): the usual reference row of SR tables.

    Args:
        scale (int): Upsampling factor.

    Forward: ``x`` (B, 3, h, w) RGB in [0, 1] -> (B, 3, scale * h, scale * w), not clamped (as ``imresize``);
    computed on the CPU and returned on ``x``'s device.
    """

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return torch.stack([imresize(img, self.scale) for img in x.cpu()]).to(x.device)


def list_images(folder):
    """Sorted file names (not paths) of the images (by extension, PPM included) directly inside ``folder``.

    :func:`basicsr_distill.utils.image_io.list_images` with the evaluation's extensions and error message; an empty
    folder gives ``[]`` (the callers name what is missing).

    Raises:
        FileNotFoundError: If ``folder`` is not a directory.
    """
    if not osp.isdir(folder):
        raise FileNotFoundError(f'Image folder not found: "{folder}".')
    return [osp.basename(p) for p in image_io.list_images(folder, extensions=IMG_EXTENSIONS, allow_empty=True)]


def read_image(path):
    """Read an image as 3-channel BGR float32 in [0, 1], shape (h, w, 3), for BasicSR's metrics.

    :func:`basicsr_distill.utils.image_io.read_rgb` (grayscale replicated to 3 channels, alpha dropped, 16-bit
    scaled by 1/65535) flipped to BGR.

    Raises:
        FileNotFoundError: If the file cannot be read as an image (the reason of ``read_rgb`` chained).
    """
    try:
        img = image_io.read_rgb(str(path))
    except ValueError as err:
        raise FileNotFoundError(f'Cannot read image "{path}".') from err
    return np.ascontiguousarray(img[..., ::-1])  # RGB -> BGR: BasicSR's img2tensor / metrics take BGR


def find_lr_file(hr_name, lr_names, scale):
    """Find the LR file matching an HR file name.

    Tried in order, with any image extension: ``{stem}x{scale}`` (Set5 / DIV2K layout: ``baby.png`` ->
    ``babyx4.png``), ``{stem}_x{scale}``, then ``{stem}`` (identical names).

    Args:
        hr_name (str): HR file name, e.g. ``'baby.png'``.
        lr_names (list[str]): File names in the LR folder.
        scale (int): Upsampling factor.

    Returns:
        str | None: The LR file name, or None if none matches.
    """
    by_stem = {}
    for name in lr_names:
        by_stem.setdefault(osp.splitext(name)[0], name)
    stem = osp.splitext(hr_name)[0]
    for candidate in (f'{stem}x{scale}', f'{stem}_x{scale}', stem):
        if candidate in by_stem:
            return by_stem[candidate]
    return None


def make_lr(img_hr, scale):
    """Bicubic (MATLAB ``imresize``) downsampling of an HR image, rounded to 8 bits like a saved LR PNG.

    Args:
        img_hr (ndarray): Shape (h, w, c), float in [0, 1], h and w multiples of ``scale``.
        scale (int): Downsampling factor.

    Returns:
        ndarray: Shape (h // scale, w // scale, c), float32 in [0, 1] on the 1/255 grid.
    """
    img_lr = imresize(img_hr, 1 / scale)
    return (np.clip(np.round(img_lr * 255.), 0, 255) / 255.).astype(np.float32)


def evaluate_sr(net,
                hr_folder,
                lr_folder=None,
                scale=4,
                device='cpu',
                crop_border=None,
                test_y_channel=True,
                extra_metrics=None):
    """PSNR / SSIM (and optionally more metrics) of ``net`` on the images of ``hr_folder``, as in BasicSR's validation.

    For each HR image (read with :func:`read_image`, grayscale replicated to 3 channels): the LR image is read from
    ``lr_folder`` (matched by :func:`find_lr_file`) or, when ``lr_folder`` is None, made from the mod-cropped HR
    image by :func:`make_lr`. The HR image is cropped to ``scale`` x the LR size. The network gets the LR image as
    RGB in [0, 1], shape (1, 3, h, w), under ``torch.no_grad()`` in eval mode; its output is clamped and rounded to
    8 bits (``tensor2img``) and compared with BasicSR's ``calculate_psnr`` / ``calculate_ssim``.

    Args:
        net (nn.Module): SR network, RGB [0, 1] in and out, output ``scale`` times the input size. It is moved to
            ``device``; its training mode is restored afterwards.
        hr_folder (str): Folder of HR images.
        lr_folder (str | None): Folder of LR images; None makes them on the fly. Default: None.
        scale (int): Upsampling factor. Default: 4.
        device (str | torch.device): Device to run the network on. Default: ``'cpu'``.
        crop_border (int | None): Pixels shaved from each border before measuring; None uses ``scale``.
        test_y_channel (bool): Measure on the Y channel (BT.601) instead of BGR. Default: True.
        extra_metrics (dict[str, callable] | None): More metrics, ``name -> fn(img_sr, img_gt) -> float``, called on
            every image with the same two arrays as PSNR / SSIM: uint8 BGR, shape (h, w, 3), in [0, 255], the border
            not shaved (each function shaves what it needs). Names must differ from ``'psnr'``, ``'ssim'`` and
            ``'per_image'``. Default: None.

    Returns:
        dict: ``{'psnr': float, 'ssim': float, 'per_image': {hr_name: {'psnr': float, 'ssim': float}}}``, the first
        two being means over the images. Each extra metric adds its mean under its name and its value to every
        ``per_image`` entry.

    Raises:
        FileNotFoundError: If a folder is missing, it holds no images, or an HR image has no matching LR image.
        ValueError: If an HR image is smaller than ``scale`` x its LR image, the output has the wrong size, an extra
            metric has a reserved name, or an extra metric raises ValueError (re-raised naming the metric and image).
    """
    extra_metrics = dict(extra_metrics or {})
    reserved = {'psnr', 'ssim', 'per_image'}.intersection(extra_metrics)
    if reserved:
        raise ValueError(f'extra_metrics may not use the reserved names {sorted(reserved)}.')
    crop_border = scale if crop_border is None else crop_border
    hr_names = list_images(hr_folder)
    if not hr_names:
        raise FileNotFoundError(f'No images in "{hr_folder}".')
    lr_names = list_images(lr_folder) if lr_folder is not None else None

    was_training = net.training
    net.to(device).eval()
    per_image = {}
    try:
        for hr_name in hr_names:
            img_hr = read_image(osp.join(hr_folder, hr_name))
            if lr_folder is None:
                h, w = img_hr.shape[0] // scale * scale, img_hr.shape[1] // scale * scale
                img_hr = img_hr[:h, :w]
                img_lr = make_lr(img_hr, scale)
            else:
                lr_name = find_lr_file(hr_name, lr_names, scale)
                if lr_name is None:
                    raise FileNotFoundError(f'No LR image for "{hr_name}" in "{lr_folder}".')
                img_lr = read_image(osp.join(lr_folder, lr_name))
                h, w = img_lr.shape[0] * scale, img_lr.shape[1] * scale
                if img_hr.shape[0] < h or img_hr.shape[1] < w:
                    raise ValueError(f'HR image "{hr_name}" {img_hr.shape[:2]} is smaller than {scale} x LR image '
                                     f'"{lr_name}" {img_lr.shape[:2]}.')
                img_hr = img_hr[:h, :w]

            lr = img2tensor(img_lr, bgr2rgb=True, float32=True).unsqueeze(0).to(device)
            with torch.no_grad():
                sr = net(lr)
            if tuple(sr.shape[-2:]) != (h, w):
                raise ValueError(f'Network output for "{hr_name}" has size {tuple(sr.shape[-2:])}, expected {(h, w)}.')
            img_sr = tensor2img(sr, rgb2bgr=True)  # uint8 BGR, rounded
            img_gt = np.clip(np.round(img_hr * 255.), 0, 255).astype(np.uint8)
            per_image[hr_name] = {
                'psnr': float(calculate_psnr(img_sr, img_gt, crop_border, test_y_channel=test_y_channel)),
                'ssim': float(calculate_ssim(img_sr, img_gt, crop_border, test_y_channel=test_y_channel))
            }
            for key, metric in extra_metrics.items():
                try:
                    per_image[hr_name][key] = float(metric(img_sr, img_gt))
                except ValueError as err:
                    raise ValueError(f'{key} of "{osp.join(hr_folder, hr_name)}": {err}') from err
    finally:
        net.train(was_training)

    result = {key: float(np.mean([v[key] for v in per_image.values()])) for key in ('psnr', 'ssim', *extra_metrics)}
    result['per_image'] = per_image
    return result

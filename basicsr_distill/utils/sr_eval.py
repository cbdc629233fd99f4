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
    """MATLAB-style bicubic up-sampling (BasicSR's ``imresize``), the reference row of SR tables: (B, 3, h, w) RGB in
    [0, 1] -> (B, 3, scale h, scale w), not clamped, computed on the CPU and returned on ``x``'s device.
    """

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return torch.stack([imresize(img, self.scale) for img in x.cpu()]).to(x.device)


def list_images(folder):
    """Sorted file names (not paths) of the images directly inside ``folder`` (PPM included); ``[]`` when empty.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    if not osp.isdir(folder):
        raise FileNotFoundError(f'Image folder not found: "{folder}".')
    return [osp.basename(p) for p in image_io.list_images(folder, extensions=IMG_EXTENSIONS, allow_empty=True)]


def read_image(path):
    """An image as (h, w, 3) BGR float32 in [0, 1] for BasicSR's metrics (``image_io.read_rgb`` flipped).

    Raises:
        FileNotFoundError: It cannot be read as an image (``read_rgb``'s reason chained).
    """
    try:
        img = image_io.read_rgb(str(path))
    except ValueError as err:
        raise FileNotFoundError(f'Cannot read image "{path}".') from err
    return np.ascontiguousarray(img[..., ::-1])  # RGB -> BGR: BasicSR's img2tensor / metrics take BGR


def find_lr_file(hr_name, lr_names, scale):
    """The LR file name matching ``hr_name`` among ``lr_names``, or None: ``{stem}x{scale}`` (Set5 / DIV2K), then
    ``{stem}_x{scale}``, then ``{stem}``, with any image extension.
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
    """MATLAB-bicubic x 1/scale of an (h, w, c) float HR image in [0, 1] (h, w multiples of ``scale``), rounded to 8
    bits
    as a saved LR PNG: (h // scale, w // scale, c) float32.
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
    """PSNR / SSIM (and ``extra_metrics``) of ``net`` on the images of ``hr_folder``, as BasicSR's validation.

    Per HR image: the LR is read from ``lr_folder`` (:func:`find_lr_file`) or made by :func:`make_lr`; the HR is
    cropped to ``scale`` x the LR size; the output (eval mode, no_grad) is rounded to 8 bits (``tensor2img``) and
    measured with BasicSR's ``calculate_psnr`` / ``calculate_ssim``.

    Args:
        net (nn.Module): SR network, RGB [0, 1] in and out, ``scale`` times the input (moved to ``device``; training
            mode restored).
        hr_folder (str): Folder of HR images.
        lr_folder (str | None): Folder of LR images; None makes them. Default: None.
        scale (int): Upsampling factor. Default: 4.
        device (str | torch.device): Device of the network. Default: ``'cpu'``.
        crop_border (int | None): Pixels shaved from each border; None: ``scale``.
        test_y_channel (bool): On the Y channel (BT.601) instead of BGR. Default: True.
        extra_metrics (dict[str, callable] | None): ``name -> fn(img_sr, img_gt) -> float`` on the uint8 BGR (h, w, 3)
            arrays, border not shaved; names other than ``'psnr'``, ``'ssim'``, ``'per_image'``. Default: None.

    Returns:
        dict: ``{'psnr', 'ssim', <extra>..., 'per_image': {hr_name: {metric: float}}}``, means over the images.

    Raises:
        FileNotFoundError: A missing or empty folder, or an HR image without LR.
        ValueError: An HR image smaller than ``scale`` x its LR, an output of the wrong size, a reserved metric name,
            or a ValueError of an extra metric (re-raised naming the metric and image).
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

"""Reading training images and cutting aligned HR / LR patch pairs (shared by the IDC instance dataset and the
coreset baselines)."""
import os
import os.path as osp

import cv2
import numpy as np
from PIL import Image

from basicsr.utils.matlab_functions import imresize

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def _jpeg_truncation(path):
    """Why the JPEG ``path`` is truncated or corrupt, or None (OpenCV decodes such files partially, silently).

    PIL decodes the entropy-coded data at 1/8 scale (``draft``), which is cheap and fails on a truncated stream.
    """
    try:
        with Image.open(path) as img:
            img.draft('RGB', (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            img.load()
    except Image.DecompressionBombError:
        return None  # too large for PIL's default limit: not evidence of corruption
    except (OSError, SyntaxError, ValueError) as err:
        text = str(err)  # other failures (a JPEG variant PIL cannot decode) are left to OpenCV
        return text if 'truncated' in text or 'broken data stream' in text else None
    return None


def read_rgb(path):
    """Read an image as float32 RGB in [0, 1], (H, W, 3).

    Conversions: grayscale (8 or 16 bit) is replicated to 3 channels; an alpha channel is dropped (not composited:
    the colours under transparent pixels are kept); palette images are expanded to RGB; 16-bit images are scaled
    by 1/65535, 8-bit ones by 1/255. EXIF orientation is not applied (the pixels as stored). Other sample types
    (float or signed TIFFs) are refused.

    Raises:
        ValueError: naming the file if it cannot be decoded (missing, not an image, truncated or corrupt: OpenCV
            refuses truncated PNG / BMP / TIFF / WebP files; truncated JPEGs, which OpenCV decodes partially, are
            detected with PIL), or has an unsupported sample type.
    """
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read image {path} (missing, truncated or not an image)')
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'image {path} has {img.dtype} samples; only 8-bit and 16-bit images are supported')
    with open(path, 'rb') as f:
        is_jpeg = f.read(3) == b'\xff\xd8\xff'
    if is_jpeg:
        problem = _jpeg_truncation(path)
        if problem:
            raise ValueError(f'cannot read image {path}: truncated or corrupt JPEG ({problem})')
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return (img[:, :, ::-1].astype(np.float32) / scale).copy()


def verify_image(path):
    """Cheap integrity check of an image file without decoding its pixels, to fail before any expensive work.

    The header is parsed with PIL; PNG files are also walked chunk by chunk to their end (CRCs checked, pixels not
    decompressed), which finds truncated PNGs. Truncated JPEGs are only found when the image is decoded
    (:func:`read_rgb`).

    Args:
        path (str): Image file.

    Returns:
        tuple[int, int]: (H, W) from the header.

    Raises:
        ValueError: naming the file if it is not an image, or a truncated or corrupt PNG. (A file PIL cannot parse
            or verify is decoded with :func:`read_rgb` instead, which decides.)
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.format == 'PNG':
                img.verify()
        return h, w
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return read_rgb(path).shape[:2]  # PIL cannot parse or verify it: OpenCV decides (raises naming the file)


def modcrop(img, scale):
    """Crop (H, W, C) so that H and W are multiples of ``scale``."""
    h, w = img.shape[:2]
    return img[:h - h % scale, :w - w % scale]


def bicubic_lr(hr, scale):
    """LR of a mod-cropped HR image with BasicSR's MATLAB-compatible bicubic ``imresize`` (float32, [0, 1])."""
    return np.clip(imresize(hr, 1 / scale), 0, 1).astype(np.float32)


def patch_positions(size, patch, stride):
    """Top-left positions along one axis: every ``stride``, plus the last position so the border is covered."""
    if size < patch:
        return []
    pos = list(range(0, size - patch + 1, stride))
    if pos[-1] != size - patch:
        pos.append(size - patch)
    return pos


def lr_patch_grid(lr_h, lr_w, scale, gt_size, stride):
    """LR top-left rows and columns of the patches :func:`cut_patch_pairs` cuts from an (lr_h, lr_w) LR image.

    Args:
        lr_h (int), lr_w (int): LR size in pixels (the mod-cropped HR size // scale).
        scale (int): s.
        gt_size (int): HR patch size (multiple of s).
        stride (int): HR stride (multiple of s).

    Returns:
        tuple[list[int], list[int]]: ``(ys, xs)``; the image has ``len(ys) * len(xs)`` patches (0 if it is smaller
        than one patch).
    """
    lq_size, lq_stride = gt_size // scale, stride // scale
    return patch_positions(lr_h, lq_size, lq_stride), patch_positions(lr_w, lq_size, lq_stride)


def cut_patch_pairs(hr, lr, scale, gt_size, stride):
    """Aligned HR / LR patches of one image.

    Args:
        hr (ndarray): (H, W, 3) mod-cropped HR, float [0, 1].
        lr (ndarray): (H/s, W/s, 3) its LR.
        scale (int): s.
        gt_size (int): HR patch size (multiple of s).
        stride (int): HR stride (multiple of s).

    Returns:
        tuple: gt (N, gt, gt, 3), lq (N, gt/s, gt/s, 3) float32 arrays and the HR top-left (y, x) of each patch.
    """
    lq_size = gt_size // scale
    ys, xs = lr_patch_grid(lr.shape[0], lr.shape[1], scale, gt_size, stride)
    coords = [(y * scale, x * scale) for y in ys for x in xs]
    lq = np.stack([lr[y:y + lq_size, x:x + lq_size] for y in ys for x in xs]) if coords else np.zeros(
        (0, lq_size, lq_size, 3), np.float32)
    gt = np.stack([hr[y:y + gt_size, x:x + gt_size] for y, x in coords]) if coords else np.zeros(
        (0, gt_size, gt_size, 3), np.float32)
    return gt, lq, coords


def list_images(folder, meta_info_file=None):
    """Sorted image paths of ``folder`` (or those named in the first column of ``meta_info_file``).

    Raises:
        FileNotFoundError: if the folder does not exist or holds no image.
    """
    if not osp.isdir(folder):
        raise FileNotFoundError(f'image folder {folder} does not exist')
    if meta_info_file:
        with open(meta_info_file) as f:
            names = [line.split()[0] for line in f if line.strip()]
        paths = [osp.join(folder, n) for n in names]
    else:
        paths = [osp.join(folder, n) for n in sorted(os.listdir(folder)) if n.lower().endswith(IMG_EXTENSIONS)]
    if not paths:
        raise FileNotFoundError(f'no image found in {folder}')
    return paths

"""Reading training images and cutting aligned HR / LR patch pairs (shared by the IDC instance dataset and the
coreset baselines)."""
import os
import os.path as osp

import cv2
import numpy as np

from basicsr.utils.matlab_functions import imresize

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def read_rgb(path):
    """Read an image as float32 RGB in [0, 1], (H, W, 3).

    Grayscale images are replicated to 3 channels, alpha is dropped, 16-bit images are scaled by 1/65535.

    Raises:
        ValueError: naming the file if it cannot be decoded.
    """
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read image {path} (missing, truncated or not an image)')
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return (img[:, :, ::-1].astype(np.float32) / scale).copy()


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
    lq_size, lq_stride = gt_size // scale, stride // scale
    ys = patch_positions(lr.shape[0], lq_size, lq_stride)
    xs = patch_positions(lr.shape[1], lq_size, lq_stride)
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

"""Aligned HR / LR patch pairs of training images (the IDC instance dataset, the baselines, stage 1)."""
import numpy as np

from basicsr.utils.matlab_functions import imresize

__all__ = ['modcrop', 'bicubic_lr', 'patch_positions', 'lr_patch_grid', 'cut_patch_pairs']


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
    """LR top-left rows and columns ``(ys, xs)`` of the patches :func:`cut_patch_pairs` cuts from an (lr_h, lr_w) LR
    image
    (``len(ys) * len(xs)`` patches, 0 if smaller than one); ``gt_size`` and ``stride`` are HR, multiples of ``scale``.
    """
    lq_size, lq_stride = gt_size // scale, stride // scale
    return patch_positions(lr_h, lq_size, lq_stride), patch_positions(lr_w, lq_size, lq_stride)


def cut_patch_pairs(hr, lr, scale, gt_size, stride):
    """Aligned patches of one image: (H, W, 3) mod-cropped HR and its (H/s, W/s, 3) LR, float [0, 1] -> gt (N, gt, gt,
    3),
    lq (N, gt/s, gt/s, 3) float32 and the HR top-left (y, x) of each; ``gt_size`` and ``stride`` multiples of s.
    """
    lq_size = gt_size // scale
    ys, xs = lr_patch_grid(lr.shape[0], lr.shape[1], scale, gt_size, stride)
    coords = [(y * scale, x * scale) for y in ys for x in xs]
    lq = np.stack([lr[y:y + lq_size, x:x + lq_size] for y in ys for x in xs]) if coords else np.zeros(
        (0, lq_size, lq_size, 3), np.float32)
    gt = np.stack([hr[y:y + gt_size, x:x + gt_size] for y, x in coords]) if coords else np.zeros(
        (0, gt_size, gt_size, 3), np.float32)
    return gt, lq, coords

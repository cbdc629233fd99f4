"""Minimax-SR stage 1, step 1 (:mod:`basicsr_distill.data.patch_selection`): HR patch candidates, as
``data.sr_patches.cut_patch_pairs`` cuts them, and their PSNR_bic selection.
"""
import math
import numpy as np
import os.path as osp
import time

from basicsr.utils import get_root_logger
from basicsr_distill.data.sr_patches import modcrop, patch_positions
from basicsr_distill.ops.psnr_bic import psnr_bic_batch
from basicsr_distill.utils.image_io import list_images, read_rgb

OPTION_PREFIX = 'distill.stage1'


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name, value, minimum):
    if not _is_int(value) or value < minimum:
        raise ValueError(f'{OPTION_PREFIX}.{name} must be an int >= {minimum}, got {value!r}')
    return int(value)


def _check_threshold(threshold):
    if threshold == 'median':
        return 'median'
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) or \
            not math.isfinite(threshold):
        raise ValueError(f"{OPTION_PREFIX}.threshold must be 'median' or a finite PSNR_bic in dB, got {threshold!r}")
    return float(threshold)


def _check_geometry(gt_size, stride, scale):
    scale = _check_int('scale', scale, 2)
    gt_size = _check_int('gt_size', gt_size, 2 * scale)
    stride = _check_int('stride', stride, 1)
    if gt_size % scale or stride % scale:
        raise ValueError(f'{OPTION_PREFIX}.gt_size ({gt_size}) and {OPTION_PREFIX}.stride ({stride}) must be '
                         f'multiples of scale={scale}')
    return gt_size, stride, scale


# ------------------------------------------------------------------------------------------------ 1. selection
def select_patches(hr_folder, gt_size, stride, scale=4, threshold='median', meta_info_file=None):
    """HR patches of every image whose PSNR_bic (Eq. 1, :func:`psnr_bic_batch`: float, peak 1) is strictly below the
    threshold (Sec. III-A); ``'median'`` is the median of all patches of all images.

    Args:
        hr_folder (str): Folder of HR images.
        gt_size (int): HR patch side, a multiple of ``scale``, at least ``2 * scale``.
        stride (int): Stride between patches, a multiple of ``scale``.
        scale (int): Resize factor of PSNR_bic (>= 2). Default: 4.
        threshold (str | float): ``'median'`` or dB. Default: ``'median'``.
        meta_info_file (str, optional): Only the images named in its first column. Default: None.

    Returns:
        tuple[list[dict], dict]: The patches in image then row-major order, ``{'path', 'y', 'x', 'size', 'psnr_bic'}``
        (HR top-left, dB, finite); and ``{'threshold_db' (None if infinite), 'num_images', 'skipped_images' (smaller
        than gt_size), 'num_candidates', 'num_selected', 'psnr_bic_median'}``.

    Raises:
        FileNotFoundError: ``hr_folder`` missing or without images.
        ValueError: Invalid ``gt_size`` / ``stride`` / ``scale`` / ``threshold``, an undecodable image (named), or no
            image of at least one patch.
    """
    gt_size, stride, scale = _check_geometry(gt_size, stride, scale)
    threshold = _check_threshold(threshold)
    logger = get_root_logger()
    start = time.monotonic()
    candidates, skipped = [], []  # (path, y, x, psnr)
    for path in list_images(hr_folder, meta_info_file):
        img = modcrop(read_rgb(path), scale)
        ys, xs = patch_positions(img.shape[0], gt_size, stride), patch_positions(img.shape[1], gt_size, stride)
        if not ys or not xs:
            skipped.append(path)
            continue
        coords = [(y, x) for y in ys for x in xs]
        psnrs = psnr_bic_batch(np.stack([img[y:y + gt_size, x:x + gt_size] for y, x in coords]), scale)
        candidates.extend((path, y, x, float(p)) for (y, x), p in zip(coords, psnrs))
    if skipped:
        shown = ', '.join(osp.basename(p) for p in skipped[:10]) + (', ...' if len(skipped) > 10 else '')
        logger.warning(f'select_patches: skipped {len(skipped)} image(s) of {hr_folder} smaller than gt_size='
                       f'{gt_size}: {shown}')
    if not candidates:
        raise ValueError(f'select_patches: no image of {hr_folder} is at least {gt_size}x{gt_size} pixels')
    all_psnr = np.array([c[3] for c in candidates])
    median = float(np.median(all_psnr))
    value = median if threshold == 'median' else threshold
    records = [{
        'path': p,
        'y': int(y),
        'x': int(x),
        'size': gt_size,
        'psnr_bic': v
    } for p, y, x, v in candidates if v < value]
    stats = {
        'threshold_db': value if math.isfinite(value) else None,
        'num_images': len({c[0]
                           for c in candidates}),
        'skipped_images': skipped,
        'num_candidates': len(candidates),
        'num_selected': len(records),
        'psnr_bic_median': median if math.isfinite(median) else None,
    }
    logger.info(f'select_patches: {len(records)} of {len(candidates)} patches ({gt_size}x{gt_size}, stride {stride}) '
                f'of {stats["num_images"]} images below PSNR_bic {value:.2f} dB ({threshold}) in '
                f'{time.monotonic() - start:.1f} s')
    return records, stats


def iter_patches(records):
    """Yield the (size, size, 3) float32 RGB patches in [0, 1] of ``records`` (``path``, ``y``, ``x``, ``size``) in
    order,
    decoding each source image once per run of its records.

    Raises:
        ValueError: An undecodable image, or a record outside its image (a stale selection); names the file.
    """
    current, img = None, None
    for rec in records:
        if rec['path'] != current:
            current, img = rec['path'], read_rgb(rec['path'])
        y, x, size = rec['y'], rec['x'], rec['size']
        if y < 0 or x < 0 or y + size > img.shape[0] or x + size > img.shape[1]:
            raise ValueError(f'patch (y={y}, x={x}, size={size}) lies outside {rec["path"]} of size {img.shape[:2]} '
                             '(the selection is stale: rerun stage 1)')
        yield img[y:y + size, x:x + size]

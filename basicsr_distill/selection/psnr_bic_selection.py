"""PSNR_bic selection (Minimax-SR's stage-1 rule, Cho et al. 2025, Eq. 1) as a coreset baseline of n patches.

* ``psnr_bic``: the paper's "Threshold Crop Select" (Table III): the patches strictly below a PSNR_bic threshold
  (default the median), then n of them drawn uniformly (seeded); a budget above the kept set is refused.
* ``psnr_bic_lowest``: the n lowest-PSNR_bic patches, lowest first (ties: lowest index); a budget past the median
  continues with a warning.
"""
import numpy as np

from basicsr_distill.ops.psnr_bic import check_psnr_bic_scores, psnr_bic_batch, select_lowest_psnr_bic
from basicsr_distill.selection.common import check_num_select
from basicsr_distill.selection.random_selection import select_random


def select_psnr_bic_threshold(scores, num_select, threshold='median', seed=0, return_info=False):
    """Threshold Crop Select: the patches strictly below ``threshold``, then ``num_select`` of them drawn uniformly.

    Args:
        scores (ndarray): (N,) PSNR_bic in dB (``inf`` allowed: never below a finite threshold).
        num_select (int): n, 1 <= n <= the number of kept patches.
        threshold (str | float): ``'median'`` of ``scores`` or dB (the reference code's fixed 23). Default:
            ``'median'``.
        seed (int): Seed of the draw (its own ``torch.Generator``). Default: 0.
        return_info (bool): Also return ``{'threshold' (dB), 'kept' ((N,) bool), 'num_kept'}``. Default: False.

    Returns:
        list[int] | tuple[list[int], dict]: n distinct indices of kept patches, sorted.

    Raises:
        ValueError: ``scores`` not 1-D or with NaN, an invalid ``threshold``, or n out of range (both counts given).
    """
    scores = check_psnr_bic_scores(scores)
    check_num_select(num_select, scores.shape[0])
    if isinstance(threshold, str) and threshold == 'median':
        value = float(np.median(scores))
    elif isinstance(threshold, (int, float, np.integer, np.floating)) and not isinstance(threshold, bool) \
            and not np.isnan(threshold):
        value = float(threshold)
    else:
        raise ValueError(f"PSNR_bic threshold must be 'median' or a number of dB, got {threshold!r}")
    kept = scores < value
    kept_idx = np.flatnonzero(kept)
    if num_select > len(kept_idx):
        raise ValueError(f'PSNR_bic threshold selection: {num_select} patches requested but only {len(kept_idx)} of '
                         f'{len(scores)} are below the threshold {value:.2f} dB; ask for fewer, raise the threshold, '
                         f'or use psnr_bic_lowest (the lowest n, past the threshold)')
    order = sorted(int(kept_idx[i]) for i in select_random(len(kept_idx), int(num_select), seed))
    if not return_info:
        return order
    return order, {'threshold': value, 'kept': kept, 'num_kept': int(len(kept_idx))}


def select_psnr_bic(patches_hr, num_select, scale=4, threshold='median', seed=0, return_info=False):
    """Threshold Crop Select on patches: :func:`~basicsr_distill.ops.psnr_bic.psnr_bic_batch`, then
    :func:`select_psnr_bic_threshold`.

    Args:
        patches_hr (ndarray): (N, H, W, 3) float RGB HR patches in [0, 1]; H, W multiples of ``scale``, >= 2 ``scale``.
        num_select, threshold, seed: As :func:`select_psnr_bic_threshold`.
        scale (int): Resize factor of the round trip (>= 2). Default: 4.
        return_info (bool): Also return the details, with ``'psnr_bic'`` (N,) added. Default: False.

    Raises:
        ValueError: Invalid patches (shape, sides, scale), threshold or n.
    """
    scores = psnr_bic_batch(np.asarray(patches_hr), scale)
    result = select_psnr_bic_threshold(scores, num_select, threshold, seed, return_info)
    if return_info:
        result[1]['psnr_bic'] = scores
    return result


def select_psnr_bic_lowest(patches_hr, num_select, scale=4, return_info=False):
    """The ``num_select`` patches with the lowest PSNR_bic, in increasing PSNR_bic
    (``ops.psnr_bic.select_lowest_psnr_bic``).

    Args:
        patches_hr, scale: As :func:`select_psnr_bic`.
        num_select (int): n, 1 <= n <= N.
        return_info (bool): Also return the details, with ``'psnr_bic'`` (N,) added. Default: False.

    Raises:
        ValueError: Invalid patches (shape, sides, scale) or n.
    """
    scores = psnr_bic_batch(np.asarray(patches_hr), scale)
    result = select_lowest_psnr_bic(scores, num_select, return_info)
    if return_info:
        result[1]['psnr_bic'] = scores
    return result

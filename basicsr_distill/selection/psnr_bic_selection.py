"""PSNR_bic selection (the stage-1 rule of Minimax-SR, Cho et al. 2025, Eq. 1) as a coreset baseline.

A patch whose bicubic x``scale`` round trip loses much (a low PSNR_bic, :mod:`basicsr_distill.ops.psnr_bic`) is an
informative one for SR. Two baselines with a fixed budget of n patches:

* ``psnr_bic`` (:func:`select_psnr_bic_threshold`, :func:`select_psnr_bic`): the Minimax-SR paper's "Threshold Crop
  Select" baseline (Table III). Keep the patches strictly below a PSNR_bic threshold (by default the median of the
  pool, Minimax-SR's stage-1 rule), then draw n of them uniformly at random (seeded). A budget larger than the kept
  set is refused.
* ``psnr_bic_lowest`` (:func:`select_psnr_bic_lowest`, the rule of
  :func:`~basicsr_distill.ops.psnr_bic.select_lowest_psnr_bic`): the n lowest-PSNR_bic
  patches, lowest first (ties: lowest index). When n is at most the number of patches below the median these are
  all below-median patches; a larger budget continues past the median (with a warning).
"""
import numpy as np

from basicsr_distill.ops.psnr_bic import check_psnr_bic_scores, psnr_bic_batch, select_lowest_psnr_bic
from basicsr_distill.selection.common import check_num_select
from basicsr_distill.selection.random_selection import select_random


def select_psnr_bic_threshold(scores, num_select, threshold='median', seed=0, return_info=False):
    """Threshold Crop Select: the patches strictly below ``threshold``, then ``num_select`` of them drawn uniformly.

    Args:
        scores (ndarray): (N,) PSNR_bic in dB (``inf`` allowed: an exact round trip, never below a finite
            threshold).
        num_select (int): n, 1 <= n <= the number of kept patches.
        threshold (str | float): ``'median'`` (the median of ``scores``, Minimax-SR's stage-1 rule) or a value in
            dB (e.g. 23, the reference code's fixed threshold). Default: ``'median'``.
        seed (int): Seed of the uniform draw among the kept patches (a ``torch.Generator``, as
            :func:`~basicsr_distill.selection.random_selection.select_random`; the global RNG is not used).
            Default: 0.
        return_info (bool): Also return ``{'threshold' (float, dB), 'kept' ((N,) bool, strictly below),
            'num_kept'}``. Default: False.

    Returns:
        list[int] | tuple[list[int], dict]: n distinct indices of kept patches, sorted.

    Raises:
        ValueError: if ``scores`` is not 1-D or holds NaN, ``threshold`` is neither ``'median'`` nor a number, or
            n is out of range (more than the kept patches: the message gives both counts).
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
    """Threshold Crop Select on patches: PSNR_bic, then :func:`select_psnr_bic_threshold`.

    PSNR_bic is :func:`~basicsr_distill.ops.psnr_bic.psnr_bic_batch` (BasicSR's MATLAB bicubic down and up by
    ``scale``, float64, peak 1, all RGB values).

    Args:
        patches_hr (ndarray): (N, H, W, 3) float RGB HR patches in [0, 1]; H, W multiples of ``scale``, at least
            ``2 * scale``.
        num_select (int): n, 1 <= n <= the number of patches below the threshold.
        scale (int): Resize factor of the round trip (>= 2). Default: 4.
        threshold (str | float): ``'median'`` or dB, see :func:`select_psnr_bic_threshold`. Default: ``'median'``.
        seed (int): Seed of the uniform draw. Default: 0.
        return_info (bool): Also return the details of :func:`select_psnr_bic_threshold` with ``'psnr_bic'`` (N,)
            added. Default: False.

    Returns:
        list[int] | tuple[list[int], dict]: n distinct sorted indices.

    Raises:
        ValueError: on invalid patches (shape, sides, scale), threshold or n.
    """
    scores = psnr_bic_batch(np.asarray(patches_hr), scale)
    result = select_psnr_bic_threshold(scores, num_select, threshold, seed, return_info)
    if return_info:
        result[1]['psnr_bic'] = scores
    return result


def select_psnr_bic_lowest(patches_hr, num_select, scale=4, return_info=False):
    """The ``num_select`` patches with the lowest PSNR_bic (:func:`select_lowest_psnr_bic` on
    :func:`~basicsr_distill.ops.psnr_bic.psnr_bic_batch`).

    Args:
        patches_hr (ndarray): (N, H, W, 3) float RGB HR patches in [0, 1]; H, W multiples of ``scale``, at least
            ``2 * scale``.
        num_select (int): n, 1 <= n <= N.
        scale (int): Resize factor of the round trip (>= 2). Default: 4.
        return_info (bool): Also return the details of :func:`select_lowest_psnr_bic` with ``'psnr_bic'`` (N,)
            added. Default: False.

    Returns:
        list[int] | tuple[list[int], dict]: n distinct indices in increasing PSNR_bic.

    Raises:
        ValueError: on invalid patches (shape, sides, scale) or n.
    """
    scores = psnr_bic_batch(np.asarray(patches_hr), scale)
    result = select_lowest_psnr_bic(scores, num_select, return_info)
    if return_info:
        result[1]['psnr_bic'] = scores
    return result

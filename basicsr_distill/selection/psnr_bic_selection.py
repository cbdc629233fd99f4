"""PSNR_bic selection (the stage-1 rule of Minimax-SR, Cho et al. 2025, Eq. 1) as a coreset baseline.

A patch whose bicubic x``scale`` round trip loses much (a low PSNR_bic, :mod:`basicsr_distill.ops.psnr_bic`) is an
informative one for SR. Minimax-SR keeps the patches strictly below the median PSNR_bic; as a baseline with a fixed
budget of n patches this module takes the n lowest-PSNR_bic patches, lowest first (ties: lowest index). When
n is at most the number of patches below the median these are all below-median patches, i.e. the budget is met
inside the stage-1 set, lowest first; a larger budget continues past the median (with a warning).
"""
import numpy as np

from basicsr.utils import get_root_logger
from basicsr_distill.ops.psnr_bic import psnr_bic_batch
from basicsr_distill.selection.common import check_num_select


def select_lowest_psnr_bic(scores, num_select, return_info=False):
    """The ``num_select`` lowest PSNR_bic values, lowest first (stable: ties go to the lowest index).

    Args:
        scores (ndarray): (N,) PSNR_bic in dB (``inf`` allowed: an exact round trip, taken last).
        num_select (int): n, 1 <= n <= N.
        return_info (bool): Also return ``{'median', 'below_median' ((N,) bool, strictly below),
            'num_above_median' (chosen patches not strictly below the median)}``. Default: False.

    Returns:
        list[int] | tuple[list[int], dict]: n distinct indices in increasing PSNR_bic.

    Raises:
        ValueError: if ``scores`` is not 1-D, holds NaN, or n is out of range.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or np.isnan(scores).any():
        raise ValueError(f'PSNR_bic scores must be a 1-D array without NaN, got shape {scores.shape}')
    num_select = check_num_select(num_select, scores.shape[0])
    order = np.argsort(scores, kind='stable')[:num_select]
    median = float(np.median(scores))
    below = scores < median
    num_above = int((~below[order]).sum())
    if num_above:
        get_root_logger().warning(
            f'PSNR_bic selection: {num_select} patches requested but only {int(below.sum())} of {len(scores)} are '
            f'below the median PSNR_bic {median:.2f} dB; the {num_above} next-lowest are taken as well')
    order = order.tolist()
    if not return_info:
        return order
    return order, {'median': median, 'below_median': below, 'num_above_median': num_above}


def select_psnr_bic(patches_hr, num_select, scale=4, return_info=False):
    """The ``num_select`` patches with the lowest PSNR_bic (see the module docstring for the rule).

    PSNR_bic is :func:`~basicsr_distill.ops.psnr_bic.psnr_bic_batch` (BasicSR's MATLAB bicubic down and up by
    ``scale``, float64, peak 1, all RGB values), then :func:`select_lowest_psnr_bic`.

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

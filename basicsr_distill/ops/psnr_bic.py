"""PSNR_bic: how much of an HR patch survives a bicubic x``scale`` round trip (Minimax-SR, Stage 1, Eq. 1).

.. math::

    \\mathcal{PSNR}_{bic} = PSNR(X, (X \\downarrow_{bic4}) \\uparrow_{bic4})

Both resizes are BasicSR's MATLAB-compatible ``imresize`` applied to the patch alone. Decisions the paper leaves open:
float arithmetic without 8-bit rounding or clipping (the measure is the loss of the linear round trip); PSNR over all
RGB values with peak 1, no border crop; ``inf`` for an exact reconstruction. :func:`psnr_bic_batch` computes the same
with :func:`bicubic_resize_matrix` products (docs/Profiling.md).

Patches are float RGB in [0, 1] with H and W multiples of ``scale`` (an int >= 2, default 4, the paper's) and at
least ``2 * scale``; other shapes, sides or scales raise ``ValueError``.
"""
import math
import numpy as np
from functools import lru_cache

from basicsr.utils import get_root_logger
from basicsr.utils.matlab_functions import calculate_weights_indices, imresize


def _check_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 2:
        raise ValueError(f'PSNR_bic scale must be an int >= 2, got {scale!r}')
    return int(scale)


def _check_sides(h, w, scale, what):
    if h % scale or w % scale or h < 2 * scale or w < 2 * scale:
        raise ValueError(f'PSNR_bic needs {what} sides that are multiples of scale={scale} and at least {2 * scale}, '
                         f'got {h}x{w}')


def psnr_bic(hr, scale=4):
    """PSNR_bic in dB of one (H, W, 3) HR patch (Eq. 1) through BasicSR's ``imresize``; ``inf`` if exact."""
    scale = _check_scale(scale)
    hr = np.asarray(hr)
    if hr.ndim != 3 or hr.shape[2] != 3:
        raise ValueError(f'psnr_bic expects an (H, W, 3) RGB patch, got shape {hr.shape}')
    _check_sides(hr.shape[0], hr.shape[1], scale, 'patch')
    x = hr.astype(np.float32)
    recon = imresize(imresize(x, 1 / scale), scale)
    mse = np.mean((x.astype(np.float64) - recon.astype(np.float64))**2)
    return float('inf') if mse == 0 else float(10. * np.log10(1. / mse))


@lru_cache(maxsize=64)
def _resize_matrix(in_length, scale_factor):
    out_length = math.ceil(in_length * scale_factor)
    weights, indices, sym_len_s, _ = calculate_weights_indices(in_length, out_length, scale_factor, 'cubic', 4, True)
    weights = weights.double().numpy()
    starts = indices[:, 0].long().numpy()  # first index into imresize's symmetrically padded signal
    mat = np.zeros((out_length, in_length))
    for i in range(out_length):
        for t in range(weights.shape[1]):
            a = int(starts[i]) + t - sym_len_s  # position in the unpadded signal, may fall in the padding
            src = -a - 1 if a < 0 else (2 * in_length - 1 - a if a >= in_length else a)  # edge-including mirror
            if not 0 <= src < in_length:
                raise ValueError(f'bicubic resize of length {in_length} by {scale_factor} reaches beyond the '
                                 'mirrored border (side too small)')
            mat[i, src] += weights[i, t]
    mat.setflags(write=False)
    return mat


def bicubic_resize_matrix(in_length, scale_factor):
    """Matrix A of BasicSR's MATLAB bicubic ``imresize`` along one axis: ``imresize(x) == A @ x``.

    Args:
        in_length (int): n, the input length.
        scale_factor (float): Output / input length (e.g. 1/4 or 4).

    Returns:
        ndarray: (ceil(n * scale_factor), n) float64, read-only (cached).

    Raises:
        ValueError: If the kernel reaches beyond the mirrored border (a side too small for ``imresize``).
    """
    return _resize_matrix(int(in_length), float(scale_factor))


def bicubic_round_trip(patches, scale=4):
    """``(X down_bic_scale) up_bic_scale`` of (N, H, W, C) patches as ``imresize`` computes it: (N, H, W, C) float64."""
    scale = _check_scale(scale)
    x = np.asarray(patches, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f'bicubic_round_trip expects (N, H, W, C) patches, got shape {x.shape}')
    h, w = x.shape[1:3]
    _check_sides(h, w, scale, 'patch')
    down_h, down_w = bicubic_resize_matrix(h, 1 / scale), bicubic_resize_matrix(w, 1 / scale)
    up_h, up_w = bicubic_resize_matrix(h // scale, scale), bicubic_resize_matrix(w // scale, scale)
    x = x.transpose(0, 3, 1, 2)  # (N, C, H, W)
    lr = down_h @ x @ down_w.T
    return (up_h @ lr @ up_w.T).transpose(0, 2, 3, 1)


def psnr_bic_batch(patches, scale=4, chunk=64):
    """PSNR_bic (Eq. 1) of (N, H, W, 3) same-size patches: (N,) float64 dB, ``inf`` where exact.

    Equals :func:`psnr_bic` to about 1e-6 dB on textured patches; ``chunk`` patches per matrix product (default 64)
    bound the float64 temporaries.
    """
    scale = _check_scale(scale)
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[3] != 3:
        raise ValueError(f'psnr_bic_batch expects (N, H, W, 3) RGB patches, got shape {patches.shape}')
    _check_sides(patches.shape[1], patches.shape[2], scale, 'patch')
    chunk = max(int(chunk), 1)
    out = np.empty(patches.shape[0], dtype=np.float64)
    for start in range(0, patches.shape[0], chunk):
        x = patches[start:start + chunk].astype(np.float64)
        mse = ((x - bicubic_round_trip(x, scale))**2).mean(axis=(1, 2, 3))
        exact = mse == 0
        out[start:start + len(x)] = np.where(exact, np.inf, 10. * np.log10(1. / np.where(exact, 1., mse)))
    return out


def check_psnr_bic_scores(scores):
    """``scores`` as a (N,) float64 array of PSNR_bic (dB).

    Raises:
        ValueError: if ``scores`` is not 1-D or holds NaN.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or np.isnan(scores).any():
        raise ValueError(f'PSNR_bic scores must be a 1-D array without NaN, got shape {scores.shape}')
    return scores


def select_lowest_psnr_bic(scores, num_select, return_info=False):
    """The ``num_select`` lowest PSNR_bic values, lowest first (stable: ties go to the lowest index).

    The rule of the ``psnr_bic_lowest`` baseline and of IDC's ``init: psnr_bic``.

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
    scores = check_psnr_bic_scores(scores)
    if isinstance(num_select, bool) or not isinstance(num_select, (int, np.integer)) or \
            not 1 <= num_select <= scores.shape[0]:
        raise ValueError(f'cannot select {num_select!r} of {scores.shape[0]} patches (need an int in [1, '
                         f'{scores.shape[0]}])')
    num_select = int(num_select)
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

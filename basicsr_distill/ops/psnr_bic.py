"""PSNR_bic: how much of an HR patch survives a bicubic x``scale`` round trip (Minimax-SR, Stage 1, Eq. 1).

.. math::

    \\mathcal{PSNR}_{bic} = PSNR(X, (X \\downarrow_{bic4}) \\uparrow_{bic4})

Both resizes are BasicSR's MATLAB-compatible ``imresize`` applied to the patch alone. Decisions the paper leaves open:
float arithmetic without 8-bit rounding or clipping (the measure is the loss of the linear round trip); PSNR over all
RGB values with peak 1, no border crop; ``inf`` for an exact reconstruction (constant patches give ``inf`` or a value
far above any threshold). :func:`psnr_bic_batch` computes the same with :func:`bicubic_resize_matrix` products
(docs/Profiling.md).
"""
import math
import numpy as np
from functools import lru_cache

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
    """PSNR_bic of one HR patch (Eq. 1) with BasicSR's ``imresize`` in both directions.

    Args:
        hr (ndarray): (H, W, 3) float RGB in [0, 1]; H and W multiples of ``scale`` and at least ``2 * scale``.
        scale (int): Resize factor (>= 2). Default: 4 (the paper's).

    Returns:
        float: PSNR in dB; ``inf`` if the round trip is exact.

    Raises:
        ValueError: If ``hr`` is not (H, W, 3), or the sides or ``scale`` are invalid.
    """
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
    """``(X down_bic_scale) up_bic_scale`` of a batch, as ``imresize`` computes it (float64, no rounding).

    Args:
        patches (ndarray): (N, H, W, C) float; H and W multiples of ``scale`` and at least ``2 * scale``.
        scale (int): Resize factor (>= 2). Default: 4.

    Returns:
        ndarray: (N, H, W, C) float64 reconstructions.

    Raises:
        ValueError: If ``patches`` is not 4-D, or the sides or ``scale`` are invalid.
    """
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
    """PSNR_bic (Eq. 1) of same-size patches, vectorised; equals :func:`psnr_bic` to about 1e-6 dB on textured patches.

    Args:
        patches (ndarray): (N, H, W, 3) float RGB in [0, 1]; H and W multiples of ``scale``, at least ``2 * scale``.
        scale (int): Resize factor (>= 2). Default: 4.
        chunk (int): Patches per matrix product (bounds the float64 temporaries). Default: 64.

    Returns:
        ndarray: (N,) float64 PSNR_bic in dB; ``inf`` where the round trip is exact.

    Raises:
        ValueError: If ``patches`` is not (N, H, W, 3), or the sides or ``scale`` are invalid.
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

"""The share of a change's energy in the upper frequency band, e.g. of IDC's x_hat (``scripts/xhat_spectrum.py``)."""
import numpy as np


def high_band_share(delta, cutoff=0.25):
    """Share of ``sum |FFT2(delta)|^2`` at frequencies with ``max(|f_y|, |f_x|) > cutoff`` (cycles per pixel).

    Args:
        delta (ndarray): (h, w) or (h, w, c) real array, e.g. x_hat minus its start in LR [0, 1] units; channels are
            transformed separately and summed.
        cutoff (float): Band edge in cycles per pixel, in (0, 0.5); 0.25 is half the Nyquist frequency. Default: 0.25.

    Returns:
        float: In [0, 1]; 0.0 for an all-zero ``delta``; about 1 - (2 cutoff)^2 for white noise (0.75 at 0.25).

    Raises:
        ValueError: ``delta`` not 2-D or 3-D, or ``cutoff`` outside (0, 0.5).
    """
    delta = np.asarray(delta, dtype=np.float64)
    if delta.ndim not in (2, 3):
        raise ValueError(f'high_band_share expects an (h, w) or (h, w, c) array, got shape {delta.shape}')
    if not 0 < cutoff < 0.5:
        raise ValueError(f'cutoff must be in (0, 0.5) cycles per pixel, got {cutoff}')
    if delta.ndim == 2:
        delta = delta[..., None]
    power = np.abs(np.fft.fft2(delta, axes=(0, 1)))**2
    fy = np.abs(np.fft.fftfreq(delta.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(delta.shape[1]))[None, :]
    total = power.sum()
    if total == 0:
        return 0.0
    return float(power[np.maximum(fy, fx) > cutoff].sum() / total)

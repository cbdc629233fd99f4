"""Argument checks shared by the selection baselines."""
import numpy as np
import torch


def check_num_select(num_select, num_candidates):
    """Return ``num_select`` as int after checking ``1 <= num_select <= num_candidates``.

    Raises:
        ValueError: if ``num_select`` is not an int in that range (the message gives both numbers).
    """
    if isinstance(num_select, bool) or not isinstance(num_select, (int, np.integer)) or \
            not 1 <= num_select <= num_candidates:
        raise ValueError(f'cannot select {num_select!r} of {num_candidates} patches (need an int in [1, '
                         f'{num_candidates}])')
    return int(num_select)


def as_feature_matrix(features):
    """(N, D) float64 numpy copy of a numpy array or tensor of features (a 1-D array is read as (N, 1)).

    Raises:
        ValueError: if ``features`` is not 1-D / 2-D, is empty or holds NaN / infinite values.
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    features = np.array(features, dtype=np.float64)
    if features.ndim == 1:
        features = features[:, None]
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f'features must be a non-empty (N, D) array, got shape {features.shape}')
    if not np.all(np.isfinite(features)):
        raise ValueError('features hold NaN or infinite values')
    return features

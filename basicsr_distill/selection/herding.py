"""Herding selection (Welling, "Herding dynamical weights to learn", ICML 2009) in the greedy mean-matching form of the
DC / DM benchmark code and iCaRL: with ``mu`` the feature mean, step k picks, without replacement,

.. math::

    s_k = \\arg\\min_{i \\notin S_{k-1}} \\| t_k - f_i \\|_2, \\qquad t_k = k \\mu - \\sum_{j \\in S_{k-1}} f_j

(the sample that brings the chosen set's mean closest to ``mu``).
"""
import numpy as np

from basicsr_distill.selection.common import as_feature_matrix, check_num_select


def select_herding(features, num_select):
    """Greedy herding (the rule of the module docstring), in float64 on the features as given; ties: lowest index.

    Args:
        features (ndarray | Tensor): (N, D) finite features (1-D is read as (N, 1)).
        num_select (int): n, 1 <= n <= N.

    Returns:
        list[int]: n distinct indices, in pick order.

    Raises:
        ValueError: ``features`` not a finite non-empty (N, D) array, or n out of range.
    """
    feats = as_feature_matrix(features)
    num = feats.shape[0]
    num_select = check_num_select(num_select, num)
    mean = feats.mean(0)
    sq_norms = np.einsum('nd,nd->n', feats, feats)
    available = np.ones(num, dtype=bool)
    chosen_sum = np.zeros(feats.shape[1])
    order = []
    for k in range(1, num_select + 1):
        target = k * mean - chosen_sum
        score = sq_norms - 2. * (feats @ target)  # ||target - f_i||^2 - ||target||^2
        score[~available] = np.inf
        idx = int(np.argmin(score))  # first minimum: ties go to the lowest index
        order.append(idx)
        available[idx] = False
        chosen_sum += feats[idx]
    return order

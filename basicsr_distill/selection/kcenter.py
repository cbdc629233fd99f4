"""Greedy k-center selection (Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set
Approach", ICLR 2018), the 2-approximation of the k-center problem:

.. math::

    s_k = \\arg\\max_{i \\notin S_{k-1}} \\min_{j \\in S_{k-1}} \\| f_i - f_j \\|_2
"""
import numpy as np
import torch

from basicsr_distill.selection.common import as_feature_matrix, check_num_select

KCENTER_STARTS = ('mean', 'random')


def select_kcenter(features, num_select, start='mean', seed=0):
    """Greedy k-center (farthest-point) selection in Euclidean feature space (float64, features as given).

    The start is the sample closest to the feature mean (``'mean'``) or a seeded random one (``'random'``); ties go to
    the lowest index, also once only duplicates remain. Cost: O(n N D) time, O(N D) memory.

    Args:
        features (ndarray | Tensor): (N, D) finite features (1-D is read as (N, 1)).
        num_select (int): n, 1 <= n <= N.
        start (str): ``'mean'`` or ``'random'``. Default: ``'mean'``.
        seed (int): Seed of the random start (its own generator). Default: 0.

    Returns:
        list[int]: n distinct indices, in pick order.

    Raises:
        ValueError: ``features`` not a finite non-empty (N, D) array, n out of range, an unknown ``start``.
    """
    if start not in KCENTER_STARTS:
        raise ValueError(f'k-center start must be one of {KCENTER_STARTS}, got {start!r}')
    feats = as_feature_matrix(features)
    num = feats.shape[0]
    num_select = check_num_select(num_select, num)
    if start == 'mean':
        first = int(np.argmin(((feats - feats.mean(0))**2).sum(1)))
    else:
        first = int(torch.randint(num, (1, ), generator=torch.Generator().manual_seed(int(seed))).item())
    order = [first]
    min_dist = ((feats - feats[first])**2).sum(1)  # squared distance to the nearest chosen sample
    available = np.ones(num, dtype=bool)
    available[first] = False
    for _ in range(num_select - 1):
        idx = int(np.argmax(np.where(available, min_dist, -np.inf)))  # first maximum: ties go to the lowest index
        order.append(idx)
        available[idx] = False
        np.minimum(min_dist, ((feats - feats[idx])**2).sum(1), out=min_dist)
    return order

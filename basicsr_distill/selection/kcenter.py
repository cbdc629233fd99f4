"""Greedy k-center selection (Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set
Approach", ICLR 2018), as used as a coreset baseline in dataset distillation.

Start from one sample ``s_1`` (the one closest to the feature mean, or a seeded random one), then repeatedly add
the sample farthest from the chosen set:

.. math::

    s_k = \\arg\\max_{i \\notin S_{k-1}} \\min_{j \\in S_{k-1}} \\| f_i - f_j \\|_2

This is the 2-approximation of the k-center problem (minimise the largest distance of any sample to its nearest
chosen one).
"""
import numpy as np
import torch

from basicsr_distill.selection.common import as_feature_matrix, check_num_select

KCENTER_STARTS = ('mean', 'random')


def select_kcenter(features, num_select, start='mean', seed=0):
    """Greedy k-center (farthest-point) selection in Euclidean feature space.

    Start (``start``):

    * ``'mean'`` (default, deterministic): the sample closest to the mean of all features (ties: lowest index);
    * ``'random'``: index ``torch.randint(N, generator=torch.Generator().manual_seed(seed))`` (the global RNG is not
      used).

    Then each step adds the not-yet-chosen sample whose distance to its nearest chosen sample is largest (ties:
    lowest index). Once every remaining sample coincides with a chosen one (duplicates), the largest distance is 0
    and the lowest remaining index is taken. Distances in float64, computed directly as ``sum((f_i - f_j)^2)``.
    Features are used as given (no normalisation). Cost: O(n N D) time, O(N D) memory.

    Args:
        features (ndarray | Tensor): (N, D) per-sample features (a 1-D array is read as (N, 1)), finite.
        num_select (int): n, how many to pick, 1 <= n <= N.
        start (str): ``'mean'`` or ``'random'``. Default: ``'mean'``.
        seed (int): Seed of the random start (unused with ``'mean'``). Default: 0.

    Returns:
        list[int]: n distinct indices, in the order they are picked (the first is the start).

    Raises:
        ValueError: if ``features`` is not a finite non-empty (N, D) array, n is out of range or ``start`` is unknown.
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

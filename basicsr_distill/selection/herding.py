"""Herding selection (Welling, "Herding dynamical weights to learn", ICML 2009), in the greedy mean-matching form
that dataset-distillation and continual-learning baselines use (iCaRL's exemplar selection, the DC / DM benchmark
code).

With features ``f_1 .. f_N`` (rows of ``features``) and their mean ``mu = (1/N) sum_i f_i``, step ``k = 1 .. n``
picks, among the samples not chosen yet, the one that brings the mean of the chosen set closest to ``mu``:

.. math::

    s_k = \\arg\\min_{i \\notin S_{k-1}} \\left\\| \\mu - \\frac{1}{k}\\Big(f_i + \\sum_{j \\in S_{k-1}} f_j\\Big)
    \\right\\|_2
        = \\arg\\min_{i \\notin S_{k-1}} \\| t_k - f_i \\|_2, \\qquad t_k = k \\mu - \\sum_{j \\in S_{k-1}} f_j

(multiplying by ``k`` does not change the arg min). Samples are drawn without replacement, so ``n = N`` returns a
permutation of all samples. Welling's original herding keeps a weight vector ``w_k = w_{k-1} + mu - f_{s_k}``
and maximises ``<w, f_i>``; the greedy rule above is the form used as a coreset baseline.
"""
import numpy as np

from basicsr_distill.selection.common import as_feature_matrix, check_num_select


def select_herding(features, num_select):
    """Greedy herding: each step adds the sample that moves the running mean of the chosen set closest to the mean.

    The rule is the one in the module docstring. Distances are computed in float64 as
    ``||t_k - f_i||^2 = ||f_i||^2 - 2 <t_k, f_i> + const``; ties (equal float64 values) go to the lowest index, so
    the result is deterministic. Features are used as given (no normalisation). Cost: O(n N D) time, O(N D) memory.

    Args:
        features (ndarray | Tensor): (N, D) per-sample features (a 1-D array is read as (N, 1)), finite.
        num_select (int): n, how many to pick, 1 <= n <= N.

    Returns:
        list[int]: n distinct indices into the rows of ``features``, in the order herding picks them.

    Raises:
        ValueError: if ``features`` is not a finite non-empty (N, D) array or n is out of range.
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

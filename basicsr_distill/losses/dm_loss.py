"""GSDD's distillation losses (Zhang et al., GSDD, Eq. 7-9), on embeddings of a random extractor.

With psi a randomly initialised extractor (re-drawn every iteration by the caller) and A(., omega) one DSA draw:

    L_dis   = || mean_i psi(A(x_i)) - mean_j psi(A(G(z_j))) ||^2                          (Eq. 7, DM)
    R       = mean_k || psi(A(x_k)) - psi(A(G(z_k))) ||^2                                  (Eq. 8)
    L_total = (1 - lambda) L_dis + lambda R,   lambda = 0.1 in the paper                   (Eq. 9)

The caller sums the per-class losses (Eq. 6). Departure: R averages over the K pairs (Eq. 8 writes one pair inside
an expectation), so its scale, and lambda's meaning, do not change with IPC.
"""
from torch import nn

from basicsr.utils.registry import LOSS_REGISTRY


def _check_2d(name, feat):
    if feat.ndim != 2:
        raise ValueError(f'{name} must be (B, D) features, got shape {tuple(feat.shape)}.')
    if feat.shape[0] == 0:
        raise ValueError(f'{name} is empty (no feature rows).')


def dm_distance(feat_real, feat_syn):
    """Inner term of Eq. 7: squared L2 distance of the mean embeddings, summed over D (as the DM reference code).

    ``feat_real`` (B1, D) real embeddings psi(A(x_i)), ``feat_syn`` (B2, D) synthetic ones (differentiable); returns a
    scalar >= 0.

    Raises:
        ValueError: If a set is not 2-D or is empty, or the feature sizes D differ.
    """
    _check_2d('feat_real', feat_real)
    _check_2d('feat_syn', feat_syn)
    if feat_real.shape[1] != feat_syn.shape[1]:
        raise ValueError(f'Feature sizes differ: feat_real {tuple(feat_real.shape)}, feat_syn {tuple(feat_syn.shape)}.')
    return ((feat_real.mean(0) - feat_syn.mean(0))**2).sum()


def paired_distance(feat_x, feat_gz, reduction='mean'):
    """Inner term of Eq. 8: squared L2 distance of rows k of ``feat_x`` and ``feat_gz``, reduced over the K pairs.

    ``feat_x`` (K, D) embeds the real images x_k, ``feat_gz`` (K, D) the G(z_k) in the same order; ``reduction`` is
    ``'mean'`` (default, see the module docstring) or ``'sum'``. Returns a scalar >= 0.

    Raises:
        ValueError: If the shapes differ, are not 2-D or empty, or ``reduction`` is unknown.
    """
    _check_2d('feat_x', feat_x)
    _check_2d('feat_gz', feat_gz)
    if feat_x.shape != feat_gz.shape:
        raise ValueError(f'Paired features need equal shapes, got {tuple(feat_x.shape)} and {tuple(feat_gz.shape)}.')
    per_pair = ((feat_x - feat_gz)**2).sum(1)
    if reduction == 'mean':
        return per_pair.mean()
    if reduction == 'sum':
        return per_pair.sum()
    raise ValueError(f'reduction must be "mean" or "sum", got {reduction!r}.')


def gsdd_objective(l_dis, r, lam=0.1):
    """GSDD's overall loss, Eq. 9: ``(1 - lam) * l_dis + lam * r``, lam in [0, 1] (0.1 in the paper).

    Raises:
        ValueError: If ``lam`` is outside [0, 1].
    """
    if not 0 <= lam <= 1:
        raise ValueError(f'lam must be in [0, 1], got {lam}.')
    return (1 - lam) * l_dis + lam * r


@LOSS_REGISTRY.register()
class GSDDLoss(nn.Module):
    """GSDD's loss (Eq. 7-9) for one class and one (extractor, DSA) draw, as a BasicSR loss.

    Args:
        loss_weight (float): Multiplier of the whole loss. Default: 1.0.
        lam (float): lambda of Eq. 9, in [0, 1]. Default: 0.1.
        reduction (str): Reduction of R over the pairs (:func:`paired_distance`). Default: ``'mean'``.

    Raises:
        ValueError: If ``lam`` is outside [0, 1] or ``reduction`` is unknown.
    """

    def __init__(self, loss_weight=1.0, lam=0.1, reduction='mean'):
        super().__init__()
        if not 0 <= lam <= 1:
            raise ValueError(f'lam must be in [0, 1], got {lam}.')
        if reduction not in ('mean', 'sum'):
            raise ValueError(f'reduction must be "mean" or "sum", got {reduction!r}.')
        self.loss_weight = loss_weight
        self.lam = lam
        self.reduction = reduction

    def forward(self, feat_real, feat_syn, feat_x=None, feat_gz=None):
        """``loss_weight * gsdd_objective(dm_distance(feat_real, feat_syn), paired_distance(feat_x, feat_gz), lam)``.

        ``feat_real`` (B1, D): real embeddings of the class; ``feat_syn`` (B2, D): all its generated images; ``feat_x``,
        ``feat_gz`` (K, D): the pairs' real and generated embeddings, same order (None only when lam = 0).

        Raises:
            ValueError: If the pairs are missing while lam > 0, or as the functions above.
        """
        l_dis = dm_distance(feat_real, feat_syn)
        if feat_x is None or feat_gz is None:
            if self.lam != 0:
                raise ValueError(f'GSDDLoss with lam={self.lam} needs the paired features feat_x and feat_gz.')
            return self.loss_weight * l_dis
        r = paired_distance(feat_x, feat_gz, self.reduction)
        return self.loss_weight * gsdd_objective(l_dis, r, self.lam)

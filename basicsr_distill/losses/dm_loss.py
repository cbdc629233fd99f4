"""GSDD's distillation losses (Zhang et al., GSDD, Eq. 7-9), on embeddings of a random extractor.

With psi a randomly initialised extractor (e.g. :class:`basicsr_distill.archs.dm_resnet_arch.DMResNet18`, re-drawn
every iteration) and A(., omega) one siamese DSA draw:

    L_dis   = || mean_i psi(A(x_i)) - mean_j psi(A(G(z_j))) ||^2                          (Eq. 7, DM)
    R       = mean_k || psi(A(x_k)) - psi(A(G(z_k))) ||^2                                  (Eq. 8)
    L_total = (1 - lambda) L_dis + lambda R,   lambda = 0.1 in the paper                   (Eq. 9)

The expectations over extractors and augmentations in Eq. 7-8 are realised by the training loop (one draw per
iteration); the functions here compute the inner terms for one draw. Over classes (Eq. 6) the per-class losses are
summed by the caller; by linearity that equals applying Eq. 9 to the class sums.
"""
from torch import nn

from basicsr.utils.registry import LOSS_REGISTRY


def _check_2d(name, feat):
    if feat.ndim != 2:
        raise ValueError(f'{name} must be (B, D) features, got shape {tuple(feat.shape)}.')
    if feat.shape[0] == 0:
        raise ValueError(f'{name} is empty (no feature rows).')


def dm_distance(feat_real, feat_syn):
    """Distribution-matching distance, the inner term of GSDD Eq. 7 (DM's loss for one class).

    ``sum_d (mean_i feat_real[i, d] - mean_j feat_syn[j, d])^2``: the squared L2 distance of the mean embeddings,
    summed (not averaged) over the feature dimensions, as in the DM reference code.

    Args:
        feat_real (Tensor): (B1, D) real embeddings psi(A(x_i)); usually without gradient.
        feat_syn (Tensor): (B2, D) synthetic embeddings psi(A(G(z_j))); gradients flow into them.

    Returns:
        Tensor: Scalar >= 0.

    Raises:
        ValueError: If a set is not 2-D or is empty, or the feature sizes D differ.
    """
    _check_2d('feat_real', feat_real)
    _check_2d('feat_syn', feat_syn)
    if feat_real.shape[1] != feat_syn.shape[1]:
        raise ValueError(f'Feature sizes differ: feat_real {tuple(feat_real.shape)}, feat_syn {tuple(feat_syn.shape)}.')
    return ((feat_real.mean(0) - feat_syn.mean(0))**2).sum()


def paired_distance(feat_x, feat_gz, reduction='mean'):
    """Paired regulariser, the inner term of GSDD Eq. 8.

    Row k of ``feat_x`` (the real image x_k) is paired with row k of ``feat_gz`` (G(z_k), z_k its latent):
    ``(1 / K) sum_k sum_d (feat_x[k, d] - feat_gz[k, d])^2``. Eq. 8 writes ||C - D||^2 for one pair inside an
    expectation; we average over the K pairs (``reduction='mean'``, the default) so that R does not grow with the
    number of latents per class (IPC) and stays on the scale of :func:`dm_distance` (one squared L2 norm over D),
    which keeps lambda of Eq. 9 meaningful across IPC settings. ``reduction='sum'`` gives the sum over pairs.

    Args:
        feat_x (Tensor): (K, D) embeddings of the real images of the pairs.
        feat_gz (Tensor): (K, D) embeddings of the generated images of the same pairs, in the same order.
        reduction (str): ``'mean'`` or ``'sum'`` over the pairs. Default: ``'mean'``.

    Returns:
        Tensor: Scalar >= 0.

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
    """GSDD's overall loss, Eq. 9: ``(1 - lam) * l_dis + lam * r``.

    Args:
        l_dis (Tensor | float): Distillation loss (Eq. 7, :func:`dm_distance`).
        r (Tensor | float): Paired regulariser (Eq. 8, :func:`paired_distance`).
        lam (float): Regularisation coefficient lambda in [0, 1]. Default: 0.1 (the paper's).

    Returns:
        Tensor | float: The weighted sum.

    Raises:
        ValueError: If ``lam`` is outside [0, 1].
    """
    if not 0 <= lam <= 1:
        raise ValueError(f'lam must be in [0, 1], got {lam}.')
    return (1 - lam) * l_dis + lam * r


@LOSS_REGISTRY.register()
class GSDDLoss(nn.Module):
    """GSDD's loss (Eq. 7-9) for one class and one (extractor, DSA) draw, as a BasicSR loss.

    ``loss_weight * ((1 - lam) * dm_distance(feat_real, feat_syn) + lam * paired_distance(feat_x, feat_gz))``.

    Args:
        loss_weight (float): Multiplier of the whole loss. Default: 1.0.
        lam (float): lambda of Eq. 9, in [0, 1]. Default: 0.1.
        reduction (str): Reduction of R over the pairs, see :func:`paired_distance`. Default: ``'mean'``.

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
        """Weighted Eq. 9.

        Args:
            feat_real (Tensor): (B1, D) real embeddings of the class.
            feat_syn (Tensor): (B2, D) embeddings of all generated images of the class.
            feat_x (Tensor | None): (K, D) embeddings of the paired real images; may be None only when lam = 0.
            feat_gz (Tensor | None): (K, D) embeddings of their generated counterparts, same order.

        Returns:
            Tensor: Scalar loss.

        Raises:
            ValueError: If the pairs are missing while lam > 0, or the shapes are invalid (see the functions).
        """
        l_dis = dm_distance(feat_real, feat_syn)
        if feat_x is None or feat_gz is None:
            if self.lam != 0:
                raise ValueError(f'GSDDLoss with lam={self.lam} needs the paired features feat_x and feat_gz.')
            return self.loss_weight * l_dis
        r = paired_distance(feat_x, feat_gz, self.reduction)
        return self.loss_weight * gsdd_objective(l_dis, r, self.lam)

"""Per-patch feature vectors for herding and k-center: the teacher's features at a layer (:class:`FeatureTap`, as IDC
matches them), global-average-pooled, or the embedding of a seeded random DM ResNet18 (as DM / GSDD use it; its
final pool kernel is ``min(4, ceil(min(h, w) / 8))`` so patches under 25 px still give a 512-vector).
"""
import math
import numpy as np
import torch

from basicsr_distill.archs.dm_resnet_arch import sample_dm_network
from basicsr_distill.utils.feature_tap import FeatureTap

FEATURE_KINDS = ('teacher', 'random')


def random_feature_network(patch_size, generator, num_feat=64):
    """The frozen random DM ResNet18 of ``patch_features(kind='random')`` for (h, w) = ``patch_size`` inputs.

    Args:
        patch_size (tuple[int, int]): (h, w) of the LR patches, each >= 1.
        generator (torch.Generator): Source of the weights (advanced); its device is the network's.
        num_feat (int): Width of the first stage. Default: 64.
    """
    pool = min(4, math.ceil(min(patch_size) / 8))
    return sample_dm_network(generator, num_feat=num_feat, pool_size=pool)


@torch.no_grad()
def patch_features(lq_patches, kind='teacher', net=None, layer=None, generator=None, batch_size=64):
    """One feature vector per LR patch (see the module docstring for the two kinds).

    Args:
        lq_patches (Tensor | ndarray): (N, 3, h, w) RGB LR patches in [0, 1] (float).
        kind (str): ``'teacher'`` or ``'random'``. Default: ``'teacher'``.
        net (nn.Module | None): ``'teacher'``: the teacher (required; any BasicSR arch, used as it is, so put it in
            eval mode). ``'random'``: a network returning (N, D) embeddings to reuse (so that several pools share
            one draw); None draws one with :func:`random_feature_network`.
        layer (str | None): ``'teacher'`` only: layer name for :class:`FeatureTap`; None uses the teacher's
            ``forward_features()``.
        generator (torch.Generator | None): ``'random'`` without ``net``: source of the weights; None uses
            ``torch.Generator().manual_seed(0)`` (the global RNG is never used).
        batch_size (int): Patches per forward pass. Default: 64.

    Returns:
        ndarray: (N, D) float64 features: ``mean_{y, x} f(x)[n, c, y, x]`` (D = C) for the teacher, the
        network's (N, D) embedding for ``'random'``.

    Raises:
        ValueError: unknown ``kind``, missing teacher, or patches that are not (N, 3, h, w).
        KeyError: ``layer`` is not a layer of the teacher (from :class:`FeatureTap`).
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f'feature kind must be one of {FEATURE_KINDS}, got {kind!r}')
    x = torch.as_tensor(np.asarray(lq_patches) if not isinstance(lq_patches, torch.Tensor) else lq_patches)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] == 0:
        raise ValueError(f'patch_features expects (N, 3, h, w) LR patches, got shape {tuple(x.shape)}')
    x = x.float()
    if kind == 'teacher':
        if net is None:
            raise ValueError("patch_features(kind='teacher') needs the teacher network (net=...)")
        tap = FeatureTap(net, layer)

        def embed(batch):
            return tap(batch).mean(dim=(2, 3))

    else:
        if net is None:
            generator = torch.Generator().manual_seed(0) if generator is None else generator
            net = random_feature_network(tuple(x.shape[2:]), generator)
        embed = net
    device = next(iter(net.parameters()), torch.empty(0)).device
    batch_size = max(int(batch_size), 1)
    out = [embed(x[i:i + batch_size].to(device)).flatten(1).double().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out).numpy()

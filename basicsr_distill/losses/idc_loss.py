"""IDC's multi-level distribution matching losses (Sec. 3.4, Eq. 6-8) on unfolded local features.

Local features are (P, p*p, C_out) tensors: P local patches, each of p*p samples (see ops/rlff.py).
"""
import torch

from basicsr_distill.losses.ncfd_loss import ncfd


def instance_loss(local_real, local_syn, max_real_samples=None, generator=None, **ncfd_kwargs):
    """L_ins (Eq. 6): NCFD between all real and all synthetic local samples of the instance.

    Args:
        local_real (Tensor): (P_r, p*p, C) real local features (no gradient needed).
        local_syn (Tensor): (P_s, p*p, C) synthetic local features.
        max_real_samples (int | None): if set, a random subset of this many real samples is used per call (drawn
            with ``generator``), which bounds the cost for large instances; None uses all.
        generator (torch.Generator | None): draws the subset and the NCFD frequencies.
        **ncfd_kwargs: num_freqs, alpha, chunk_size (see :func:`ncfd`).

    Returns:
        Tensor: scalar.
    """
    real = _subsample(local_real.reshape(-1, local_real.shape[-1]), max_real_samples, generator)
    return ncfd(real, local_syn.reshape(-1, local_syn.shape[-1]), generator=generator, **ncfd_kwargs)


def group_loss(local_real, labels_real, local_syn, assigned, max_real_samples=None, generator=None,
               **ncfd_kwargs):
    """L_group (Eq. 7): sum over groups m of NCFD(g_m(x), g_m(x_hat)), with id() as feature map.

    Groups without an assigned synthetic patch do not contribute (early in the progressive assignment).

    Args:
        local_real (Tensor): (P_r, p*p, C).
        labels_real (Tensor): (P_r,) K-means group of each real local patch.
        local_syn (Tensor): (P_s, p*p, C).
        assigned (Tensor): (P_s,) group of each synthetic local patch, -1 if not yet assigned.
        max_real_samples (int | None): per-group cap on real samples (random subset per call).
        generator (torch.Generator | None): subsets and frequencies.

    Returns:
        Tensor: scalar (0 if nothing is assigned).
    """
    total = local_syn.new_zeros(())
    channels = local_syn.shape[-1]
    for group in torch.unique(assigned[assigned >= 0]).tolist():
        real = local_real[labels_real == group].reshape(-1, channels)
        syn = local_syn[assigned == group].reshape(-1, channels)
        total = total + ncfd(_subsample(real, max_real_samples, generator), syn, generator=generator, **ncfd_kwargs)
    return total


def pair_loss(local_real, local_syn, assigned, pair_index):
    """L_pair (Eq. 8): sum_m (1/N_m) sum_i ||f''(x)^{g_m(i)} - f''(x_hat)^{g_m(i)}||_1.

    The L1 norm of a pair is taken as the mean absolute difference over its p*p*C values (a normalisation
    choice: it keeps w_pair independent of p and C_out).

    Args:
        local_real (Tensor): (P_r, p*p, C).
        local_syn (Tensor): (P_s, p*p, C).
        assigned (Tensor): (P_s,) groups, -1 if unassigned (unassigned patches have no pair).
        pair_index (Tensor): (P_s,) index of the paired real patch (ignored where unassigned).

    Returns:
        Tensor: scalar (0 if nothing is assigned).
    """
    total = local_syn.new_zeros(())
    for group in torch.unique(assigned[assigned >= 0]).tolist():
        rows = torch.nonzero(assigned == group).squeeze(1)
        per_pair = (local_real[pair_index[rows]] - local_syn[rows]).abs().flatten(1).mean(1)
        total = total + per_pair.mean()
    return total


def _subsample(samples, max_samples, generator):
    if max_samples is None or samples.shape[0] <= max_samples:
        return samples
    gen_device = generator.device if generator is not None else samples.device
    idx = torch.randperm(samples.shape[0], generator=generator, device=gen_device)[:max_samples]
    return samples[idx.to(samples.device)]

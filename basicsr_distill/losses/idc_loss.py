"""IDC's multi-level distribution matching losses (Sec. 3.4, Eq. 6-8) on unfolded local features.

Local features are (P, p*p, C_out) tensors: P local patches, each of p*p samples (see ops/rlff.py).

NCFD's frequencies (Eq. 2) come from a per-instance *bank*: B frequencies t ~ N(0, I) drawn once when the
instance starts, on which the characteristic functions of the real samples (all of them, for the whole instance
and for every K-means group) are computed once, since the real features of an instance never change. Every step
draws F of the B frequencies afresh; the synthetic samples are projected once on them, and the same projection
gives both L_ins (mean over all samples) and L_group (mean per group). With B -> infinity this is NCFM's fresh
draw per call; the bank removes the real side from the per-step cost (the step then scales with the synthetic
set only) and lets every real sample count instead of a subsample.
"""
import torch
from torch.nn import functional as F

from basicsr_distill.losses.ncfd_loss import ncfd_from_cf, sample_frequencies


class RealCharacteristicBank:
    """Frequencies and real-side characteristic functions of one instance.

    Args:
        local_real (Tensor): (P_r, p*p, C) real local features.
        labels_real (Tensor): (P_r,) K-means group of each real local patch, in [0, M).
        num_groups (int): M.
        bank_size (int): B, number of frequencies in the bank.
        generator (torch.Generator | None): draws the bank.
        chunk_size (int): real samples per chunk when computing the characteristic functions (memory bound).

    Attributes:
        freqs (Tensor): (B, C) frequencies.
        cf_ins (tuple[Tensor, Tensor]): (Re, Im) of the whole instance, each (B,).
        cf_group (tuple[Tensor, Tensor]): (Re, Im) per group, each (M, B).
    """

    def __init__(self, local_real, labels_real, num_groups, bank_size, generator=None, chunk_size=8192):
        channels = local_real.shape[-1]
        self.freqs = sample_frequencies(bank_size, channels, generator, local_real.device, local_real.dtype)
        samples = F.normalize(local_real.reshape(-1, channels), dim=1)
        sample_group = labels_real.repeat_interleave(local_real.shape[1])
        re_g = samples.new_zeros(num_groups, bank_size)
        im_g = samples.new_zeros(num_groups, bank_size)
        counts = torch.bincount(sample_group, minlength=num_groups).to(samples.dtype)
        for start in range(0, samples.shape[0], chunk_size):
            proj = samples[start:start + chunk_size] @ self.freqs.t()  # (chunk, B)
            groups = sample_group[start:start + chunk_size]
            re_g.index_add_(0, groups, torch.cos(proj))
            im_g.index_add_(0, groups, torch.sin(proj))
        self.cf_ins = (re_g.sum(0) / counts.sum(), im_g.sum(0) / counts.sum())
        self.cf_group = (re_g / counts.clamp(min=1)[:, None], im_g / counts.clamp(min=1)[:, None])
        self.bank_size = bank_size


class _SegmentedCharacteristic(torch.autograd.Function):
    """Empirical characteristic function of all samples and of each segment (group), with a fused backward.

    Forward: proj = samples @ freqs^T (S, F); Re = mean cos(proj), Im = mean sin(proj) over all S samples and over
    the samples of each segment (a (G, S) averaging matrix times cos / sin). Backward reuses the saved cos / sin
    (autograd would recompute them and expand the means separately): d proj = cos * G_im - sin * G_re, where
    G = (averaging matrix)^T @ (segment gradients) + (whole-set gradient) / S; then d samples = d proj @ freqs.
    """

    @staticmethod
    def forward(ctx, samples, freqs, segment, num_segments):
        proj = samples @ freqs.t()
        cos, sin = torch.cos(proj), torch.sin(proj)
        del proj
        onehot = (segment[None, :] == torch.arange(num_segments, device=segment.device)[:, None]).to(samples.dtype)
        average = onehot / onehot.sum(1, keepdim=True).clamp(min=1)  # (G, S), rows of unassigned samples are 0
        ctx.save_for_backward(cos, sin, freqs, average)
        return cos.mean(0), sin.mean(0), average @ cos, average @ sin

    @staticmethod
    def backward(ctx, g_re, g_im, g_re_seg, g_im_seg):
        cos, sin, freqs, average = ctx.saved_tensors
        num = cos.shape[0]
        per_re = torch.addmm(g_re[None, :] / num, average.t(), g_re_seg)  # (S, F)
        per_im = torch.addmm(g_im[None, :] / num, average.t(), g_im_seg)
        grad_proj = torch.addcmul(cos * per_im, sin, per_re, value=-1)
        return grad_proj @ freqs, None, None, None


def multi_level_ncfd(bank, local_syn, assigned, num_freqs, alpha=0.5, generator=None):
    """L_ins (Eq. 6) and L_group (Eq. 7) for one step.

    L_ins = NCFD(all real samples, all synthetic samples); L_group = sum over the groups m that hold at least one
    assigned synthetic patch of NCFD(g_m(x), g_m(x_hat)) with id() as feature map. Both use the same F frequencies,
    drawn without replacement from the bank, and one projection of the synthetic samples.

    Args:
        bank (RealCharacteristicBank): the instance's real side.
        local_syn (Tensor): (P_s, p*p, C) synthetic local features (with gradient).
        assigned (Tensor): (P_s,) group of each synthetic local patch, -1 if not yet assigned.
        num_freqs (int): F per step (<= B).
        alpha (float): amplitude weight of Eq. 3.
        generator (torch.Generator | None): draws the F frequencies.

    Returns:
        tuple[Tensor, Tensor]: scalars l_ins and l_group (0 while nothing is assigned).
    """
    gen_device = generator.device if generator is not None else 'cpu'
    idx = torch.randperm(bank.bank_size, generator=generator, device=gen_device)[:num_freqs].to(local_syn.device)
    channels = local_syn.shape[-1]
    samples = F.normalize(local_syn.reshape(-1, channels), dim=1)
    num_groups = bank.cf_group[0].shape[0]
    segment = assigned.repeat_interleave(local_syn.shape[1])
    re, im, re_g, im_g = _SegmentedCharacteristic.apply(samples, bank.freqs[idx], segment, num_groups)
    l_ins = ncfd_from_cf((bank.cf_ins[0][idx], bank.cf_ins[1][idx]), (re, im), alpha)
    groups = torch.unique(assigned[assigned >= 0])
    if groups.numel() == 0:
        return l_ins, local_syn.new_zeros(())
    cf_real = (bank.cf_group[0][groups][:, idx], bank.cf_group[1][groups][:, idx])
    l_group = ncfd_from_cf(cf_real, (re_g[groups], im_g[groups]), alpha).sum()
    return l_ins, l_group


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
    rows = torch.nonzero(assigned >= 0).squeeze(1)
    if rows.numel() == 0:
        return local_syn.new_zeros(())
    per_pair = (local_real[pair_index[rows]] - local_syn[rows]).abs().flatten(1).mean(1)
    group_size = torch.bincount(assigned[rows])[assigned[rows]].to(per_pair.dtype)
    return (per_pair / group_size).sum()  # = sum over groups of the mean over the group's pairs


"""IDC's multi-level distribution matching losses (Sec. 3.4, Eq. 6-8) on unfolded local features (P, p*p, C_out).

NCFD's frequencies (Eq. 2) come from a per-instance bank of B frequencies on which the real characteristic functions
are computed once; every step draws F of them (docs/Methods_IDC.md). The whole set and the groups are evaluated as
rows of one (2, 1 + M', F) tensor ([Re, Im] x [whole set, groups]).
"""
import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from basicsr_distill.losses.ncfd_loss import ncfd_from_cf, sample_frequencies

_NORM_EPS = 1e-12  # eps of F.normalize


class RealCharacteristicBank:
    """Frequencies and real-side characteristic functions of one instance.

    Args:
        local_real (Tensor): (P_r, p*p, C) real local features.
        labels_real (Tensor): (P_r,) K-means group of each real local patch, in [0, M).
        num_groups (int): M.
        bank_size (int): B, number of frequencies in the bank.
        generator (torch.Generator | None): Draws the bank.
        chunk_elements (int): Bound on the elements of each cos / sin block (memory). Default: 2**22.

    Attributes:
        freqs (Tensor): (B, C) frequencies.
        cf (Tensor): (2, 1 + M, B) [Re, Im] of the whole instance (row 0) and of group m (row 1 + m).
        cf_ins (tuple[Tensor, Tensor]): (Re, Im) of the whole instance, each (B,) (views of ``cf``).
        cf_group (tuple[Tensor, Tensor]): (Re, Im) per group, each (M, B) (views of ``cf``).
    """

    def __init__(self, local_real, labels_real, num_groups, bank_size, generator=None, chunk_elements=2**22):
        channels = local_real.shape[-1]
        self.freqs = sample_frequencies(bank_size, channels, generator, local_real.device, local_real.dtype)
        samples = F.normalize(local_real.reshape(-1, channels), dim=1)
        sample_group = labels_real.repeat_interleave(local_real.shape[1])
        re_g = samples.new_zeros(num_groups, bank_size)
        im_g = samples.new_zeros(num_groups, bank_size)
        counts = torch.bincount(sample_group, minlength=num_groups).to(samples.dtype)
        chunk_size = max(1, chunk_elements // bank_size)
        for start in range(0, samples.shape[0], chunk_size):
            proj = samples[start:start + chunk_size] @ self.freqs.t()  # (chunk, B)
            groups = sample_group[start:start + chunk_size]
            re_g.index_add_(0, groups, torch.cos(proj))
            im_g.index_add_(0, groups, torch.sin(proj))
        total, size = counts.sum(), counts.clamp(min=1)[:, None]
        self.cf = torch.stack([
            torch.cat([re_g.sum(0, keepdim=True) / total, re_g / size]),
            torch.cat([im_g.sum(0, keepdim=True) / total, im_g / size])
        ])
        self.cf_ins = (self.cf[0, 0], self.cf[1, 0])
        self.cf_group = (self.cf[0, 1:], self.cf[1, 1:])
        self.bank_size = bank_size


class _SegmentedCharacteristic(torch.autograd.Function):
    """Characteristic function of L2-normalised samples, whole set and per segment, with a hand-written backward.

    ``apply(samples (P, n, C) or (S, C), freqs (F, C), segment (P,) in [0, G) or -1, G)`` -> (2, 1 + G, F) [Re, Im] x
    [all samples, segment 0..G-1]; frequencies get no gradient. Backward: W = A^T grad, d proj = cos W_im - sin W_re,
    d u = d proj freqs, d x = (d u - u <u, d u>) / ||x|| (as ``F.normalize``).
    """

    @staticmethod
    def forward(ctx, samples, freqs, segment, num_segments):
        blocks = samples if samples.dim() == 3 else samples[:, None]
        num_blocks, block, _ = blocks.shape
        norm = torch.linalg.vector_norm(blocks, dim=-1, keepdim=True)
        inv_norm = norm.clamp(min=_NORM_EPS).reciprocal_()
        unit = blocks * inv_norm
        cs = unit.new_empty(2, num_blocks, block, freqs.shape[0])
        torch.matmul(unit, freqs.t(), out=cs[0])  # proj
        torch.sin(cs[0], out=cs[1])
        cs[0].cos_()
        member = segment[None, :] == torch.arange(num_segments, device=segment.device)[:, None]  # (G, P)
        size = member.sum(1, keepdim=True) * block
        average = torch.cat(
            [unit.new_full((1, num_blocks), 1 / (num_blocks * block)),
             member.to(unit.dtype) / size.clamp(min=1)])  # (1 + G, P)
        ctx.save_for_backward(cs, unit, inv_norm, norm >= _NORM_EPS, freqs, average)
        ctx.input_shape = samples.shape
        return torch.matmul(average, cs.sum(2))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        cs, unit, inv_norm, inside, freqs, average = ctx.saved_tensors
        weight = torch.matmul(average.t(), grad)[:, :, None]  # (2, P, 1, F)
        grad_proj = torch.mul(cs[0], weight[1]).addcmul_(cs[1], weight[0], value=-1)  # (P, n, F)
        grad_unit = torch.mm(grad_proj.view(-1, freqs.shape[0]), freqs).view(grad_proj.shape[:2] + freqs.shape[1:])
        radial = (unit * grad_unit).sum(-1, keepdim=True).mul_(inside)
        grad_samples = grad_unit.addcmul_(unit, radial, value=-1).mul_(inv_norm)
        return grad_samples.view(ctx.input_shape), None, None, None


def multi_level_ncfd(bank, local_syn, assigned, num_freqs, alpha=0.5, generator=None):
    """L_ins (Eq. 6) and L_group (Eq. 7) for one step, on F frequencies drawn without replacement from the bank.

    L_group sums NCFD(g_m(x), g_m(x_hat)) over the groups holding an assigned synthetic patch (id() as feature map).

    Args:
        bank (RealCharacteristicBank): The instance's real side.
        local_syn (Tensor): (P_s, p*p, C) synthetic local features (with gradient).
        assigned (Tensor): (P_s,) group of each synthetic local patch, -1 if unassigned.
        num_freqs (int): F per step (<= B).
        alpha (float): Amplitude weight of Eq. 3.
        generator (torch.Generator | None): Draws the F frequencies.

    Returns:
        tuple[Tensor, Tensor]: Scalars l_ins and l_group (0 while nothing is assigned).
    """
    gen_device = generator.device if generator is not None else 'cpu'
    idx = torch.randperm(bank.bank_size, generator=generator, device=gen_device)[:num_freqs].to(local_syn.device)
    groups = torch.unique(assigned[assigned >= 0])
    rows = torch.cat([groups.new_zeros(1), groups + 1])  # the whole set, then the groups holding assigned patches
    num_groups = bank.cf.shape[1] - 1
    cf_syn = _SegmentedCharacteristic.apply(local_syn, bank.freqs[idx], assigned, num_groups)[:, rows]
    cf_real = bank.cf[:, rows[:, None], idx]  # (2, 1 + M', F)
    dist = ncfd_from_cf(cf_real.unbind(0), cf_syn.unbind(0), alpha)  # (1 + M',)
    return dist[0], dist[1:].sum()


def pair_loss(local_real, local_syn, assigned, pair_index):
    """L_pair (Eq. 8): sum_m (1/N_m) sum_i ||f''(x)^{g_m(i)} - f''(x_hat)^{g_m(i)}||_1, scalar (0 if none assigned).

    ``local_real`` (P_r, p*p, C), ``local_syn`` (P_s, p*p, C); ``assigned`` (P_s,) groups, -1 if unassigned (no pair);
    ``pair_index`` (P_s,) the paired real patch. Departure: a pair's L1 norm is the mean absolute difference over its
    p*p*C values, so w_pair does not depend on p and C_out.
    """
    valid = assigned >= 0
    if not bool(valid.any()):
        return local_syn.new_zeros(())
    group_size = torch.bincount(assigned[valid]).clamp_(min=1)[assigned.clamp(min=0)]  # N_m (>= 1 if unassigned)
    weight = valid / (group_size * local_syn[0].numel()).to(local_syn.dtype)  # (P_s,)
    diff = local_real[torch.where(valid, pair_index, 0)] - local_syn
    return diff.abs().sum((1, 2)) @ weight

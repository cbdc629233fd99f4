"""The fused per-step losses of losses/idc_loss.py against Eq. 6-8 written out directly, in float64.

multi_level_ncfd batches the whole set and the groups into one (2, 1 + M', F) characteristic function, normalises
and sums the samples of a local patch inside one autograd Function and pair_loss is one weighted sum: values and
gradients must be those of the plain formulas (F.normalize, empirical_cf, ncfd_from_cf, per-group means) up to
float64 rounding.
"""
import pytest
import torch
from torch.nn import functional as F

import basicsr_distill  # noqa: F401

# isort: split
from basicsr_distill.losses.idc_loss import (RealCharacteristicBank, _SegmentedCharacteristic, multi_level_ncfd,
                                             pair_loss)
from basicsr_distill.losses.ncfd_loss import empirical_cf, ncfd_from_cf

P_R, P_S, SAMPLES, C, M, B = 30, 9, 16, 6, 4, 64


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(P_R, SAMPLES, C, generator=gen, dtype=torch.float64)
    labels = torch.arange(P_R) % M
    syn = real[:P_S] + 0.5 * torch.randn(P_S, SAMPLES, C, generator=gen, dtype=torch.float64)
    return real, labels, syn


def _direct_ncfd(real, labels, syn, assigned, freqs, alpha):
    """Eq. 6-7 with autograd: NCFD of all samples; sum over the assigned groups of the group NCFD."""

    def cf(x):
        return empirical_cf(F.normalize(x.reshape(-1, C), dim=1), freqs)

    l_ins = ncfd_from_cf(cf(real), cf(syn), alpha)
    l_group = syn.new_zeros(())
    for g in torch.unique(assigned[assigned >= 0]).tolist():
        l_group = l_group + ncfd_from_cf(cf(real[labels == g]), cf(syn[assigned == g]), alpha)
    return l_ins, l_group


ASSIGNMENTS = {
    'partial': [0, -1, 2, 2, 0, -1, 0, 2, 2],
    'partial_no_group_0': [-1, 1, 3, 3, 1, -1, 1, 3, 3],
    'full': [0, 1, 2, 3, 0, 1, 2, 3, 3],
    'none': [-1] * P_S,
}


@pytest.mark.parametrize('name', sorted(ASSIGNMENTS))
def test_multi_level_ncfd_equals_direct_formula_values_and_gradients(name):
    real, labels, syn = _data()
    assigned = torch.tensor(ASSIGNMENTS[name])
    bank = RealCharacteristicBank(real, labels, M, bank_size=B, generator=torch.Generator().manual_seed(1))
    num_freqs, alpha = 40, 0.3
    x = syn.clone().requires_grad_(True)
    l_ins, l_group = multi_level_ncfd(bank, x, assigned, num_freqs, alpha, generator=torch.Generator().manual_seed(2))
    (l_ins + 2 * l_group).backward()

    idx = torch.randperm(B, generator=torch.Generator().manual_seed(2))[:num_freqs]  # the same draw
    y = syn.clone().requires_grad_(True)
    d_ins, d_group = _direct_ncfd(real, labels, y, assigned, bank.freqs[idx], alpha)
    (d_ins + 2 * d_group).backward()
    assert torch.allclose(l_ins, d_ins, rtol=1e-12, atol=1e-14)
    assert torch.allclose(l_group, d_group, rtol=1e-12, atol=1e-14)
    assert torch.allclose(x.grad, y.grad, rtol=1e-10, atol=1e-14)
    if name == 'none':
        assert l_group.item() == 0


def test_multi_level_ncfd_non_contiguous_input_and_zero_sample():
    real, labels, syn = _data(3)
    syn[4, 7] *= 1e-14  # norm below eps: F.normalize divides by eps, and its gradient is d u / eps
    syn_t = syn.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous
    assert not syn_t.is_contiguous()
    assigned = torch.tensor(ASSIGNMENTS['partial'])
    bank = RealCharacteristicBank(real, labels, M, bank_size=B, generator=torch.Generator().manual_seed(1))
    x = syn_t.clone().requires_grad_(True)
    y = syn.clone().requires_grad_(True)
    losses = multi_level_ncfd(bank, x, assigned, B, generator=torch.Generator().manual_seed(4))
    direct = _direct_ncfd(real, labels, y, assigned, bank.freqs, 0.5)  # F = B: every bank frequency, any order
    sum(losses).backward()
    sum(direct).backward()
    for a, b in zip(losses, direct):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    assert torch.allclose(x.grad, y.grad, rtol=1e-9, atol=1e-14)
    assert x.grad[4, 7].abs().max() > 1e6  # the eps branch is taken, and matches autograd's


def test_bank_rows_are_the_direct_characteristic_functions():
    real, labels, _ = _data()
    bank = RealCharacteristicBank(real, labels, M, bank_size=B, generator=torch.Generator().manual_seed(1))
    assert bank.cf.shape == (2, 1 + M, B)

    def cf(x):
        return torch.stack(empirical_cf(F.normalize(x.reshape(-1, C), dim=1), bank.freqs))

    assert torch.allclose(bank.cf[:, 0], cf(real))
    for g in range(M):
        assert torch.allclose(bank.cf[:, 1 + g], cf(real[labels == g]))
    assert torch.equal(bank.cf_ins[0], bank.cf[0, 0]) and torch.equal(bank.cf_group[1], bank.cf[1, 1:])


def test_segmented_characteristic_blocks_forward_and_gradcheck():
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)  # 5 blocks of 3 samples
    freqs = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    segment = torch.tensor([1, -1, 0, 1, 1])
    cf = _SegmentedCharacteristic.apply(blocks, freqs, segment, 3)
    assert cf.shape == (2, 4, 6)
    unit = F.normalize(blocks.detach(), dim=-1)
    assert torch.allclose(cf[:, 0], torch.stack(empirical_cf(unit.reshape(-1, 4), freqs)))
    assert torch.allclose(cf[:, 1], torch.stack(empirical_cf(unit[2], freqs)))
    assert torch.allclose(cf[:, 2], torch.stack(empirical_cf(unit[[0, 3, 4]].reshape(-1, 4), freqs)))
    assert cf[:, 3].abs().max() == 0  # empty segment
    # gradcheck runs backward several times: the saved tensors must stay untouched
    assert torch.autograd.gradcheck(lambda x: _SegmentedCharacteristic.apply(x, freqs, segment, 3), (blocks, ))


def _direct_pair(local_real, local_syn, assigned, pair_index):
    """Eq. 8: sum over groups of the mean over the group's pairs of the per-pair mean absolute difference."""
    total = local_syn.new_zeros(())
    for g in torch.unique(assigned[assigned >= 0]).tolist():
        rows = torch.nonzero(assigned == g).squeeze(1)
        per_pair = (local_real[pair_index[rows]] - local_syn[rows]).abs().mean(dim=(1, 2))
        total = total + per_pair.mean()
    return total


@pytest.mark.parametrize('name', ['partial', 'partial_no_group_0', 'full'])
def test_pair_loss_equals_direct_formula_values_and_gradients(name):
    real, _, syn = _data(5)
    assigned = torch.tensor(ASSIGNMENTS[name])
    pair_index = torch.randint(0, P_R, (P_S, ), generator=torch.Generator().manual_seed(6))
    pair_index[assigned < 0] = -1000  # ignored where unassigned, even if it is no valid index
    x = syn.clone().requires_grad_(True)
    y = syn.clone().requires_grad_(True)
    loss = pair_loss(real, x, assigned, pair_index)
    direct = _direct_pair(real, y, assigned, pair_index)
    loss.backward()
    direct.backward()
    assert torch.allclose(loss, direct, rtol=1e-12, atol=1e-15)
    assert torch.allclose(x.grad, y.grad, rtol=1e-12, atol=1e-15)
    if (assigned < 0).any():
        assert x.grad[assigned < 0].abs().max() == 0  # unassigned patches have no pair

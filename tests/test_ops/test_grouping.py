import torch

import basicsr_distill  # noqa: F401

# isort: split
from torch.nn import functional as F

from basicsr_distill.losses.idc_loss import RealCharacteristicBank, multi_level_ncfd, pair_loss
from basicsr_distill.losses.ncfd_loss import empirical_cf, ncfd_from_cf
from basicsr_distill.ops.grouping import (assign_progressive, assignment_target, group_quotas, kmeans_groups,
                                          nearest_real_in_group)


def test_quotas_follow_real_group_sizes():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)  # sizes 6, 3, 1 of 10
    assert group_quotas(labels, 3, 10).tolist() == [6, 3, 1]
    assert group_quotas(labels, 3, 5).tolist() == [3, 2, 0]  # exact 3, 1.5, 0.5: remainder to the first tie
    q = group_quotas(labels, 3, 7)  # exact 4.2, 2.1, 0.7 -> floors 4, 2, 0, remainder 1 to group 2 (0.7)
    assert q.tolist() == [4, 2, 1] and q.sum() == 7


def test_kmeans_is_seeded_and_finds_clusters():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20, 2, generator=gen) * 0.1
    b = torch.randn(10, 2, generator=gen) * 0.1 + 5
    labels, cent = kmeans_groups(torch.cat([a, b]), 2, seed=0)
    labels2, _ = kmeans_groups(torch.cat([a, b]), 2, seed=0)
    assert torch.equal(labels, labels2)
    assert len(set(labels[:20].tolist())) == 1 and len(set(labels[20:].tolist())) == 1
    assert labels[0] != labels[20] and cent.shape == (2, 2)


def test_progressive_assignment_nearest_first_and_quota_bound():
    centroids = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    desc = torch.tensor([[0.1, 0.0], [9.0, 0.0], [0.5, 0.0], [0.2, 0.0]])  # three near group 0, one near group 1
    quotas = torch.tensor([2, 2])
    assigned = torch.full((4, ), -1)
    step1 = assign_progressive(desc, centroids, quotas, assigned, assignment_target(1, 2, 4))  # 2 patches
    assert step1.tolist() == [0, -1, -1, 0]  # the two nearest pairs overall: (0, g0) d=.1 and (3, g0) d=.2
    step2 = assign_progressive(desc, centroids, quotas, step1, assignment_target(2, 2, 4))
    # group 0 is full, so patch 2 (near group 0) must go to group 1 together with patch 1
    assert step2.tolist() == [0, 1, 1, 0]


def test_pair_picks_nearest_real_patch_of_same_group():
    real = torch.tensor([[[0.0]], [[1.0]], [[5.0]], [[0.9]]])  # (P_r=4, pp=1, C=1)
    labels = torch.tensor([0, 0, 1, 1])
    syn = torch.tensor([[[0.8]], [[0.8]]])
    assigned = torch.tensor([0, 1])
    idx = nearest_real_in_group(syn, real, labels, assigned, torch.tensor([0, 1]))
    assert idx.tolist() == [1, 3]  # group 0: 1.0 is nearest; group 1: 0.9 (not 1.0, which is group 0)
    # L_pair = sum over groups of the group-mean L1: |1.0 - 0.8| + |0.9 - 0.8| = 0.3
    loss = pair_loss(real, syn, assigned, idx)
    assert abs(loss.item() - 0.3) < 1e-6
    # unassigned patches give no pair loss
    assert pair_loss(real, syn, torch.tensor([-1, -1]), idx).item() == 0


def _direct(local_real, labels_real, local_syn, assigned, freqs):
    """Eq. 6-7 written out: NCFD of all samples, and the sum over assigned groups of the group NCFD."""
    c = local_syn.shape[-1]

    def cf(x):
        return empirical_cf(F.normalize(x.reshape(-1, c), dim=1), freqs)

    l_ins = ncfd_from_cf(cf(local_real), cf(local_syn))
    l_group = sum(
        ncfd_from_cf(cf(local_real[labels_real == g]), cf(local_syn[assigned == g]))
        for g in torch.unique(assigned[assigned >= 0]).tolist())
    return l_ins, l_group


def test_multi_level_ncfd_matches_equations_and_skips_unassigned_groups():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(6, 4, 3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    syn = (real[[0, 3, 5]] + 0.3 * torch.randn(3, 4, 3, generator=gen, dtype=torch.float64)).requires_grad_(True)
    bank = RealCharacteristicBank(real, labels, 3, bank_size=16, generator=torch.Generator().manual_seed(1))
    assert bank.cf_ins[0].shape == (16, ) and bank.cf_group[0].shape == (3, 16)
    # F = B: every bank frequency is used, so the result must equal the direct formula on bank.freqs
    assigned = torch.tensor([0, -1, 2])
    l_ins, l_group = multi_level_ncfd(bank, syn, assigned, num_freqs=16, generator=torch.Generator().manual_seed(2))
    d_ins, d_group = _direct(real, labels, syn, assigned, bank.freqs)
    assert torch.allclose(l_ins, d_ins) and torch.allclose(l_group, d_group)
    l_group.backward()
    assert syn.grad[1].abs().sum() == 0 and syn.grad[0].abs().sum() > 0 and syn.grad[2].abs().sum() > 0
    _, nothing = multi_level_ncfd(bank, syn, torch.tensor([-1, -1, -1]), num_freqs=8)
    assert nothing.item() == 0
    # a subset of F < B frequencies is the direct formula on that subset
    l_sub, _ = multi_level_ncfd(bank, syn, assigned, num_freqs=5, generator=torch.Generator().manual_seed(3))
    idx = torch.randperm(16, generator=torch.Generator().manual_seed(3))[:5]
    assert torch.allclose(l_sub, _direct(real, labels, syn, assigned, bank.freqs[idx])[0])


def test_fused_characteristic_backward_gradcheck():
    from basicsr_distill.losses.idc_loss import _SegmentedCharacteristic
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    freqs = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    segment = torch.tensor([0, 1, -1, 1, 2, 0, -1])
    assert torch.autograd.gradcheck(lambda x: _SegmentedCharacteristic.apply(x, freqs, segment, 3), (samples, ))

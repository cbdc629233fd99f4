"""Tests of GSDD's losses (Eq. 7-9) with values computed by hand on 2-D features."""
import pytest

import basicsr_distill  # noqa: F401  (must precede basicsr / torchvision)

# isort: split

import torch

from basicsr.losses import build_loss
from basicsr_distill.losses.dm_loss import GSDDLoss, dm_distance, gsdd_objective, paired_distance

# real means (2, 3); synthetic mean (0, 0): L_dis = 2^2 + 3^2 = 13
REAL = torch.tensor([[1., 2.], [3., 4.]], dtype=torch.float64)
SYN = torch.tensor([[0., 0.]], dtype=torch.float64)
# pairs: (1, 2) - (0, 0) -> 1 + 4 = 5; (3, 4) - (3, 2) -> 0 + 4 = 4; mean 4.5, sum 9
PAIR_X = REAL
PAIR_GZ = torch.tensor([[0., 0.], [3., 2.]], dtype=torch.float64)


def test_built_by_basicsr_from_its_option_dict():
    loss = build_loss({'type': 'GSDDLoss', 'loss_weight': 2., 'lam': 0.5, 'reduction': 'sum'})
    assert isinstance(loss, GSDDLoss)
    assert loss(REAL, SYN, PAIR_X, PAIR_GZ).item() == 22  # 2 * (0.5 * 13 + 0.5 * 9)
    assert loss(REAL, REAL.flip(0), PAIR_X, PAIR_X).item() == 0  # same means, every pair equal


def test_dm_distance_by_hand():
    assert dm_distance(REAL, SYN).item() == 13
    syn = torch.tensor([[1., 1.], [3., 1.], [2., 4.]], dtype=torch.float64)  # mean (2, 2): 0^2 + 1^2
    assert dm_distance(REAL, syn).item() == 1
    assert dm_distance(REAL, REAL).item() == 0
    assert dm_distance(REAL, REAL.flip(0)).item() == 0  # only the means count
    assert dm_distance(REAL, torch.cat([syn, syn])).item() == 1


def test_paired_distance_by_hand():
    assert paired_distance(PAIR_X, PAIR_GZ).item() == 4.5
    assert paired_distance(PAIR_X, PAIR_GZ, reduction='sum').item() == 9
    assert paired_distance(PAIR_X, PAIR_X).item() == 0
    # order matters: same sets, other pairing
    assert paired_distance(PAIR_X, PAIR_GZ.flip(0)).item() == pytest.approx(((4 + 0) + (9 + 16)) / 2)


def test_objective_by_hand_and_limits():
    l_dis, r = dm_distance(REAL, SYN), paired_distance(PAIR_X, PAIR_GZ)
    assert gsdd_objective(l_dis, r).item() == pytest.approx(0.9 * 13 + 0.1 * 4.5)  # 12.15
    assert gsdd_objective(l_dis, r, lam=0).item() == 13
    assert gsdd_objective(l_dis, r, lam=1).item() == 4.5
    assert gsdd_objective(2., 4., lam=0.5) == 3.


def test_loss_module():
    loss = GSDDLoss(loss_weight=2., lam=0.1)
    assert loss(REAL, SYN, PAIR_X, PAIR_GZ).item() == pytest.approx(2 * 12.15)
    assert GSDDLoss(lam=0)(REAL, SYN).item() == 13
    assert GSDDLoss(lam=1)(REAL, SYN, PAIR_X, PAIR_GZ).item() == 4.5
    assert GSDDLoss(lam=1, reduction='sum')(REAL, SYN, PAIR_X, PAIR_GZ).item() == 9
    with pytest.raises(ValueError, match='paired'):
        loss(REAL, SYN)


def test_gradients_analytic_and_finite():
    syn = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    real = torch.randn(4, 5, dtype=torch.float64)
    dm_distance(real, syn).backward()
    # d/d syn_j sum_d (m_r - m_s)^2 = -2 (m_r - m_s) / B2 for every row j
    expected = (-2 * (real.mean(0) - syn.detach().mean(0)) / 3).expand(3, 5)
    assert torch.allclose(syn.grad, expected)

    gz = torch.randn(4, 5, requires_grad=True)
    x = torch.randn(4, 5)
    feat_syn = torch.cat([gz, torch.randn(2, 5)])
    GSDDLoss(lam=0.1)(x, feat_syn, x, gz).backward()
    assert torch.isfinite(gz.grad).all() and gz.grad.abs().sum() > 0


@pytest.mark.parametrize('call', [
    lambda: dm_distance(torch.zeros(2, 3), torch.zeros(2, 4)),
    lambda: dm_distance(torch.zeros(0, 3), torch.zeros(2, 3)),
    lambda: dm_distance(torch.zeros(2, 3, 1), torch.zeros(2, 3)),
    lambda: paired_distance(torch.zeros(2, 3), torch.zeros(3, 3)),
    lambda: paired_distance(torch.zeros(2, 3), torch.zeros(2, 3), reduction='none'),
    lambda: gsdd_objective(1., 1., lam=1.5),
    lambda: GSDDLoss(lam=-0.1),
    lambda: GSDDLoss(reduction='max'),
])
def test_invalid_inputs(call):
    with pytest.raises(ValueError):
        call()

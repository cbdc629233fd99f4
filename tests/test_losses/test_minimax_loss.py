"""Tests of Minimax-SR's losses (Eq. 3-6) and memories, with hand-made 2-D vectors of known cosines."""
import math
import pytest

import basicsr_distill  # noqa: F401  (must precede basicsr / torchvision)

# isort: split

import torch

from basicsr.utils.registry import LOSS_REGISTRY
from basicsr_distill.losses.minimax_loss import (FIFOMemory, MinimaxLoss, cosine_matrix, diversity_loss,
                                                 high_frequency_energy, minimax_objective, predict_x0_from_eps,
                                                 representativeness_loss, sr_loss)

R = 1 / math.sqrt(2)
# class 0: predictions (1, 0), (0, 1) against memory (1, 0), (1, 1), (1, -1):
#   cos = [[1, R, R], [0, R, -R]]: whole-matrix min -R (row 2), max 1 (row 1); per-row mins / maxes would differ
PRED0 = torch.tensor([[1., 0.], [0., 1.]], dtype=torch.float64)
MEM0 = torch.tensor([[1., 0.], [1., 1.], [1., -1.]], dtype=torch.float64)
# class 1: prediction (2, 0) against memory (0, 3): cos 0 (scale-free)
PRED1 = torch.tensor([[2., 0.]], dtype=torch.float64)
MEM1 = torch.tensor([[0., 3.]], dtype=torch.float64)


def _memory(num_classes=3):
    mem = FIFOMemory(num_classes, size=64)
    mem.push([0, 0, 0, 1], torch.cat([MEM0, MEM1]))
    return mem


def test_registered():
    assert LOSS_REGISTRY.get('MinimaxLoss') is MinimaxLoss


def test_cosine_matrix_by_hand():
    sim = cosine_matrix(PRED0, MEM0)
    assert torch.allclose(sim, torch.tensor([[1, R, R], [0, R, -R]], dtype=torch.float64))


def test_fifo_size_order_and_class_separation():
    mem = FIFOMemory(3, size=3)
    rows = torch.arange(1., 6.)[:, None].repeat(1, 2)  # row i = (i, i)
    mem.push(torch.tensor([0, 0, 1]), rows[:3])
    mem.push(torch.tensor([0, 0]), rows[3:5])
    assert mem.get(0)[:, 0].tolist() == [2., 4., 5.]  # 1 (oldest) dropped
    assert mem.get(1)[:, 0].tolist() == [3.]
    assert mem.get(2).shape == (0, 2) and len(mem) == 4
    mem.push([1] * 5, torch.arange(10., 15.)[:, None].repeat(1, 2))  # more than size at once: newest 3 kept
    assert mem.get(1)[:, 0].tolist() == [12., 13., 14.]
    assert mem.get(0)[:, 0].tolist() == [2., 4., 5.]  # untouched by class 1


def test_fifo_detaches_flattens_and_checks():
    mem = FIFOMemory(2, size=4)
    x = torch.randn(2, 1, 2, 2, requires_grad=True)
    mem.push([1, 1], x)
    assert mem.get(1).shape == (2, 4) and not mem.get(1).requires_grad
    x.data.zero_()  # a copy is stored
    assert mem.get(1).abs().sum() > 0
    with pytest.raises(ValueError, match='must lie in'):
        mem.push([2], torch.randn(1, 4))
    with pytest.raises(ValueError, match='size'):
        mem.push([0], torch.randn(1, 5))
    with pytest.raises(ValueError, match='labels'):
        mem.push([0, 1], torch.randn(1, 4))


def test_fifo_state_dict_round_trip():
    mem = _memory()
    other = FIFOMemory(3, size=64)
    other.load_state_dict(mem.state_dict())
    for c in range(3):
        assert torch.equal(other.get(c), mem.get(c))
    with pytest.raises(ValueError, match='classes'):
        FIFOMemory(2).load_state_dict(mem.state_dict())


def test_representativeness_whole_matrix_min_and_class_mean():
    mem = _memory()
    pred, labels = torch.cat([PRED0, PRED1]), torch.tensor([0, 0, 1])
    # class 0: 1 - (-R); class 1: 1 - 0
    assert representativeness_loss(pred, labels, mem).item() == pytest.approx(((1 + R) + 1) / 2)
    assert representativeness_loss(PRED0, [0, 0], mem).item() == pytest.approx(1 + R)
    # class 1 predictions only see class 1's memory
    assert representativeness_loss(PRED1, [1], mem).item() == pytest.approx(1)


def test_diversity_whole_matrix_max():
    mem = _memory()
    pred, labels = torch.cat([PRED0, PRED1]), torch.tensor([0, 0, 1])
    assert diversity_loss(pred, labels, mem).item() == pytest.approx((1 + 0) / 2)
    assert diversity_loss(PRED0[1:], [0], mem).item() == pytest.approx(R)  # row 2 alone: max R


def test_empty_memory_skipped():
    mem = _memory()
    # class 2 has no memory: adds 0 but counts in the mean over the classes present (the reference's normalisation)
    pred, labels = torch.cat([PRED0, PRED1]), torch.tensor([0, 0, 2])
    assert representativeness_loss(pred, labels, mem).item() == pytest.approx((1 + R) / 2)
    assert diversity_loss(pred, labels, mem).item() == pytest.approx(1 / 2)
    empty = FIFOMemory(3)
    assert representativeness_loss(pred, labels, empty).item() == 0
    assert diversity_loss(pred, labels, empty).item() == 0
    assert diversity_loss(pred, labels, {0: MEM0}).item() == pytest.approx(1 / 2)  # any .get(c) mapping works


def test_gradient_only_through_the_extreme_pair():
    mem = _memory()
    pred = PRED0.clone().requires_grad_()
    representativeness_loss(pred, [0, 0], mem).backward()
    assert pred.grad[0].abs().sum() == 0 and pred.grad[1].abs().sum() > 0  # min is in row 2
    pred.grad = None
    diversity_loss(pred, [0, 0], {0: torch.tensor([[1., .5]], dtype=torch.float64)}).backward()
    assert pred.grad[0].abs().sum() > 0 and pred.grad[1].abs().sum() == 0  # max is in row 1


def test_sr_loss_sign_raises_high_frequency_energy():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=32, mode='bilinear')
    img = (smooth + 0.05 * torch.rand(1, 3, 32, 32, generator=g)).requires_grad_()
    loss = sr_loss(img, scale=4)
    assert loss.item() == pytest.approx(-high_frequency_energy(img, 4).item()) and loss.item() < 0
    loss.backward()
    with torch.no_grad():
        stepped = img - 10 * img.grad
        assert high_frequency_energy(stepped, 4) > high_frequency_energy(img, 4)
        assert sr_loss(stepped, 4) < loss
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert high_frequency_energy(flat, 4).item() == pytest.approx(0, abs=1e-10)
    with pytest.raises(ValueError, match='multiple'):
        sr_loss(torch.rand(1, 3, 30, 32))


def test_predict_x0_from_eps_inverts_q_sample():
    alphas_cumprod = torch.linspace(0.99, 0.01, 1000)
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([10, 900])
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert torch.allclose(predict_x0_from_eps(z_t, eps, alphas_cumprod, t), x0, atol=1e-4)


def test_objective_by_hand():
    assert minimax_objective(1., 2., 3., -4.) == pytest.approx(1 + 0.002 * 2 + 0.008 * 3 - 4)
    assert minimax_objective(1., 2., 3., 4., 0.5, 0.25, 0.) == pytest.approx(1 + 1 + 0.75)
    with pytest.raises(ValueError, match='lambda_d'):
        minimax_objective(1., 2., 3., 4., lambda_d=-1)


def test_loss_module_uses_memory_of_earlier_steps():
    loss = MinimaxLoss(num_classes=3, memory_size=4, lambda_r=1., lambda_d=1., lambda_sr=0.)
    real, pred = MEM0[:2].view(2, 2, 1, 1), PRED0.view(2, 2, 1, 1)
    total, terms = loss(pred, torch.tensor([0, 0]), real)
    assert total.item() == 0 and terms['l_r'].item() == 0  # memories empty on the first step
    assert loss.real_memory.get(0).shape == (2, 2) and torch.equal(loss.syn_memory.get(0), PRED0)
    total, terms = loss(pred, torch.tensor([0, 0]), real, l_simple=0.5)
    # real memory (1, 0), (1, 1): min cos 0 -> L_r 1; syn memory = the same predictions: max cos 1 -> L_d 1
    assert terms['l_r'].item() == pytest.approx(1) and terms['l_d'].item() == pytest.approx(1)
    assert total.item() == pytest.approx(2.5)
    state = loss.memory_state_dict()
    fresh = MinimaxLoss(num_classes=3, memory_size=4)
    fresh.load_memory_state_dict(state)
    assert torch.equal(fresh.syn_memory.get(0), loss.syn_memory.get(0))

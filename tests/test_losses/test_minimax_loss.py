"""Tests of Minimax-SR's losses (Eq. 3-6) and memories, with hand-made 2-D vectors of known cosines; L_SR against
PSNR_bic (Eq. 1) and BasicSR's imresize."""
import math
import pytest

import basicsr_distill  # noqa: F401  (must precede basicsr / torchvision)

# isort: split

import numpy as np
import torch
from torch.nn import functional as F

from basicsr.losses import build_loss
from basicsr.utils.matlab_functions import imresize
from basicsr_distill.losses.minimax_loss import (FIFOMemory, MinimaxLoss, cosine_matrix, diversity_loss,
                                                 high_frequency_energy, minimax_objective, predict_x0_from_eps,
                                                 representativeness_loss, sr_loss)
from basicsr_distill.ops.psnr_bic import psnr_bic_batch

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


def _texture(seed, size=32, batch=1):
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(batch, 3, size // 4, size // 4, generator=g), size=size, mode='bilinear')
    return (0.8 * smooth + 0.2 * torch.rand(batch, 3, size, size, generator=g)).double()


def test_basicsr_builds_the_loss_from_an_option_dict_and_it_computes_eq6():
    loss = build_loss({'type': 'MinimaxLoss', 'num_classes': 2, 'lambda_r': 0.5, 'lambda_sr': 2.0, 'scale': 4})
    assert isinstance(loss, MinimaxLoss) and loss.real_memory.num_classes == 2
    hr = _texture(0)
    pred = PRED0.view(2, 2, 1, 1)
    loss.real_memory.push([0], MEM0[1:2])  # (1, 1): cos 1 / R with the predictions -> L_r = 1 - R
    total, terms = loss(pred, torch.tensor([0, 0]), pred, pred_hr=hr, l_simple=0.25)
    assert terms['l_r'].item() == pytest.approx(1 - R) and terms['l_d'].item() == 0
    assert terms['l_sr'].item() == pytest.approx(-high_frequency_energy(hr, 4).item())
    assert total.item() == pytest.approx(0.25 + 0.5 * (1 - R) + 2.0 * terms['l_sr'].item())


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
    smooth = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=32, mode='bilinear')
    img = (0.9 * smooth + 0.05 * torch.rand(1, 3, 32, 32, generator=g)).requires_grad_()  # inside [0, 1]
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
    with pytest.raises(ValueError, match='smaller than 2 x scale'):
        sr_loss(torch.rand(1, 3, 4, 32))


def test_high_frequency_energy_is_the_psnr_bic_round_trip_of_eq1():
    """-L_SR = 10^(-PSNR_bic / 10): the same MATLAB bicubic round trip (a = -0.5, antialiased down) as stage 1."""
    img = _texture(1, 48, batch=2)
    for scale in (2, 3, 4):
        energy = [high_frequency_energy(img[i:i + 1], scale).item() for i in range(2)]
        psnr = psnr_bic_batch(img.permute(0, 2, 3, 1).numpy(), scale)
        assert np.allclose(energy, 10**(-psnr / 10), rtol=1e-9)
    # and BasicSR's imresize itself, down then up, on one image
    x = img[0].permute(1, 2, 0).numpy()
    ref = imresize(imresize(x, 1 / 4), 4)
    assert high_frequency_energy(img[:1], 4).item() == pytest.approx(((ref - x)**2).mean(), rel=1e-5)


def test_the_documented_torch_kernels_hold():
    """The module docstring's claim on F.interpolate: antialiased bicubic is Keys a = -0.5, plain bicubic a = -0.75."""

    def keys(x, a):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.

    n, s = 64, 4
    impulses = torch.eye(n, dtype=torch.float64).view(n, 1, 1, n)
    down = F.interpolate(impulses, size=(1, n // s), mode='bicubic', antialias=True)[:, 0, 0, 5]  # centre 21.5
    for a, close in ((-0.5, True), (-0.75, False)):
        w = torch.tensor([keys((p - 21.5) / s, a) for p in range(n)], dtype=torch.float64)
        assert torch.allclose(down, w / w.sum(), atol=1e-12) == close
    lr = torch.zeros(1, 1, 1, 16, dtype=torch.float64)
    lr[..., 8] = 1
    for antialias, a in ((False, -0.75), (True, -0.5)):
        up = F.interpolate(lr, size=(1, n), mode='bicubic', antialias=antialias)[0, 0, 0, 20:44]
        w = torch.tensor([keys((j + .5) / s - .5 - 8, a) for j in range(20, 44)], dtype=torch.float64)
        assert torch.allclose(up, w, atol=1e-12)


def test_sr_loss_clamps_to_0_1_is_bounded_and_out_of_range_pixels_pass_no_gradient():
    img = ((_texture(2) - 0.5) * 6).requires_grad_()  # about [-3, 3]: an x0-decode at a noisy timestep
    loss = sr_loss(img, 4)
    assert loss.item() == pytest.approx(sr_loss(img.detach().clamp(0, 1), 4).item())
    assert loss.item() != pytest.approx(sr_loss(img, 4, clamp=False).item())
    loss.backward()
    outside = (img.detach() < 0) | (img.detach() > 1)
    assert outside.any() and (~outside).any()
    assert img.grad[outside].abs().max() == 0 and img.grad[~outside].abs().max() > 0
    g = torch.Generator().manual_seed(3)
    worst = min(sr_loss(torch.randint(0, 2, (1, 3, 32, 32), generator=g).double() * 8 - 4, 4).item() for _ in range(20))
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None]) % 2
    worst = min(worst, sr_loss(checker.double().expand(1, 3, 32, 32), 4).item())
    assert -1.6 < worst < -0.2  # bounded; -sr_loss(unclamped) of the same images grows with the range
    assert sr_loss(checker.double().expand(1, 3, 32, 32) * 100, 4, clamp=False).item() < -1000


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

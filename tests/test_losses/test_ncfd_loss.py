import math
import torch

import basicsr_distill  # noqa: F401

# isort: split
from basicsr_distill.losses.ncfd_loss import NCFDLoss, empirical_cf, ncfd, ncfd_terms


def _rows(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_empirical_cf_hand_values():
    # one sample x = (1, 0), frequencies t = (0, 0) and (pi / 2, 0): Phi = 1 and exp(j pi / 2) = j
    feat = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    freqs = torch.tensor([[0.0, 0.0], [math.pi / 2, 0.0]], dtype=torch.float64)
    re, im = empirical_cf(feat, freqs)
    assert torch.allclose(re, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(im, torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-12)
    # chunked evaluation is the same
    many = _rows(37, 2, 0)
    a = empirical_cf(many, freqs)
    b = empirical_cf(many, freqs, chunk_size=5)
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])


def test_ncfd_zero_for_identical_sets():
    x = _rows(64, 8, 1)
    loss = ncfd(x, x.clone(), num_freqs=256, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-5  # sqrt(0.5 * 1e-12) from the phase clamp
    assert ncfd(x, x + 0.5, num_freqs=256, generator=torch.Generator().manual_seed(0)).item() > 1e-3


def test_amp_plus_pha_is_squared_cf_distance():
    x, y = _rows(50, 6, 2), _rows(30, 6, 3) * 0.3 + 1
    freqs = _rows(128, 6, 4)
    cf_x, cf_y = empirical_cf(x, freqs), empirical_cf(y, freqs)
    amp, pha = ncfd_terms(cf_x, cf_y)
    dist2 = (cf_x[0] - cf_y[0])**2 + (cf_x[1] - cf_y[1])**2
    assert torch.allclose(amp + pha, dist2, atol=1e-9)
    # so with alpha = 1/2 the loss equals sqrt(1/2) * mean_t |Phi_X - Phi_Y| (up to the clamp)
    loss = ncfd(x, y, alpha=0.5, freqs=freqs, normalize=False)
    assert torch.allclose(loss, math.sqrt(0.5) * dist2.sqrt().mean(), atol=1e-6)


def test_hand_computed_single_frequency():
    # X = {(1, 0)}, Y = {(0, 1)}, t = (pi, 0): Phi_X = -1, Phi_Y = 1 -> amp = 0, pha = 2 * (1 + 1) = 4
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    freqs = torch.tensor([[math.pi, 0.0]], dtype=torch.float64)
    amp, pha = ncfd_terms(empirical_cf(x, freqs), empirical_cf(y, freqs))
    assert abs(amp.item()) < 1e-9 and abs(pha.item() - 4.0) < 1e-9
    loss = ncfd(x, y, alpha=0.25, freqs=freqs, normalize=False)
    assert abs(loss.item() - math.sqrt(0.75 * 4.0)) < 1e-6


def test_gradients_finite_even_for_identical_sets():
    x = _rows(20, 5, 5).float()
    y = x.clone().requires_grad_(True)
    ncfd(x, y, num_freqs=64, generator=torch.Generator().manual_seed(1)).backward()
    assert torch.isfinite(y.grad).all()
    z = _rows(7, 5, 6).float().requires_grad_(True)
    ncfd(x, z, num_freqs=64, generator=torch.Generator().manual_seed(1)).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_loss_module_is_seeded_and_weighted():
    x, y = _rows(16, 4, 7).float(), _rows(16, 4, 8).float()
    a = NCFDLoss(loss_weight=300, num_freqs=32, seed=3)(x, y)
    b = NCFDLoss(loss_weight=1, num_freqs=32, seed=3)(x, y)
    assert torch.allclose(a, 300 * b)

"""Differentiable Siamese Augmentation (basicsr_distill/ops/dsa.py): siamese draws, chunk invariance, gradients,
each family against a hand-made transform, and seeding that never touches the global RNG."""
import math
import pytest
import torch

import basicsr_distill  # noqa: F401

# isort: split
from basicsr_distill.ops.dsa import DSA_FAMILIES, DSAConfig, apply_dsa, dsa_pair, sample_dsa_params


def _images(n, h=8, w=8, seed=0, dtype=torch.float32):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _params(family, h, w, **p):
    """A hand-made draw of one family."""
    if family in ('scale', 'rotate'):
        p = {'align_corners': True, 'padding_mode': 'zeros', **p}
    return {'family': family, 'height': h, 'width': w, 'ops': [(family, p)]}


def _cfg(family):
    # prob_flip=1 so that a flip family always does something
    return DSAConfig(strategy=family, prob_flip=1.0)


@pytest.mark.parametrize('family', DSA_FAMILIES + ('color_crop_cutout_flip_scale_rotate', ))
def test_same_draw_reaches_both_batches(family):
    real = _images(4, seed=1)
    syn = torch.cat([_images(1, seed=2), real[2:3].clone()])  # syn[1] is real[2]
    for seed in range(6):
        for mode in ('M', 'S'):
            cfg = DSAConfig(strategy=family, mode=mode)
            a, b = dsa_pair(real, real.clone(), cfg, torch.Generator().manual_seed(seed))
            assert torch.equal(a, b)
            out_real, out_syn = dsa_pair(real, syn, cfg, torch.Generator().manual_seed(seed))
            assert out_real.shape == real.shape and out_syn.shape == syn.shape
            torch.testing.assert_close(out_real[2], out_syn[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize('family', DSA_FAMILIES)
def test_one_draw_on_chunks_equals_whole_batch(family):
    x = _images(5, seed=3)
    for seed in range(3):
        params = sample_dsa_params(_cfg(family), 8, 8, torch.Generator().manual_seed(seed))
        whole = apply_dsa(x, params)
        chunks = torch.cat([apply_dsa(x[:2], params), apply_dsa(x[2:], params)])
        torch.testing.assert_close(chunks, whole, rtol=0, atol=1e-6)
        assert not torch.equal(whole, x)  # the draw did something


@pytest.mark.parametrize('family', DSA_FAMILIES)
def test_gradcheck(family):
    params = sample_dsa_params(_cfg(family), 5, 6, torch.Generator().manual_seed(7))
    x = _images(2, 5, 6, seed=4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: apply_dsa(t, params), (x, ))


def test_flip_is_horizontal():
    x = _images(2, 4, 5)
    torch.testing.assert_close(apply_dsa(x, _params('flip', 4, 5, flip=True)), torch.flip(x, [3]), rtol=0, atol=0)
    assert torch.equal(apply_dsa(x, _params('flip', 4, 5, flip=False)), x)
    flips = [
        sample_dsa_params(DSAConfig(strategy='flip'), 4, 5,
                          torch.Generator().manual_seed(s))['ops'][0][1]['flip'] for s in range(200)
    ]
    assert 70 < sum(flips) < 130  # p = 0.5


@pytest.mark.parametrize('dy, dx', [(1, -2), (-3, 0), (0, 2), (2, 4)])
def test_crop_is_integer_shift_with_zeros(dy, dx):
    h, w = 4, 5
    x = torch.arange(2 * 3 * h * w, dtype=torch.float32).reshape(2, 3, h, w) + 1
    expected = torch.zeros_like(x)
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                expected[..., i, j] = x[..., i + dy, j + dx]
    assert torch.equal(apply_dsa(x, _params('crop', h, w, dy=dy, dx=dx)), expected)


def test_crop_range():
    cfg = DSAConfig(strategy='crop')  # 16 * 0.125 = 2 rows, 24 * 0.125 = 3 columns
    draws = [sample_dsa_params(cfg, 16, 24, torch.Generator().manual_seed(s))['ops'][0][1] for s in range(300)]
    assert {d['dy'] for d in draws} == set(range(-2, 3))
    assert {d['dx'] for d in draws} == set(range(-3, 4))


def test_cutout_is_zeroed_square():
    h = w = 8
    x = _images(2, h, w) + 1  # no zeros of its own
    seen_clipped = False
    for seed in range(40):
        params = sample_dsa_params(DSAConfig(strategy='cutout'), h, w, torch.Generator().manual_seed(seed))
        p = params['ops'][0][1]
        cy, cx = p['cy'], p['cx']
        assert 0 <= cy <= h and 0 <= cx <= w  # side 4 is even: centre in {0, ..., 8}
        expected = x.clone()
        for i in range(h):
            for j in range(w):
                if cy - 2 <= i <= cy + 1 and cx - 2 <= j <= cx + 1:  # side 0.5 * 8 = 4
                    expected[..., i, j] = 0
        assert torch.equal(apply_dsa(x, params), expected)
        seen_clipped |= (expected == 0).sum().item() < 2 * 3 * 16
    assert seen_clipped


def test_scale_one_and_rotate_zero_are_identity():
    x = _images(2, 7, 9)
    torch.testing.assert_close(apply_dsa(x, _params('scale', 7, 9, sx=1.0, sy=1.0)), x, rtol=0, atol=1e-6)
    torch.testing.assert_close(apply_dsa(x, _params('rotate', 7, 9, angle=0.0)), x, rtol=0, atol=1e-6)


def test_scale_by_hand():
    x = _images(2, 5, 5)
    # align_corners=True: sampling columns -1, -0.5, 0, 0.5, 1 times 2 are pixels -2, 0, 2, 4, 6
    out = apply_dsa(x, _params('scale', 5, 5, sx=2.0, sy=1.0))
    torch.testing.assert_close(out[..., 1:4], x[..., [0, 2, 4]], rtol=0, atol=1e-6)
    assert out[..., [0, 4]].abs().max() == 0
    out = apply_dsa(x, _params('scale', 5, 5, sx=1.0, sy=2.0))
    torch.testing.assert_close(out[..., 1:4, :], x[..., [0, 2, 4], :], rtol=0, atol=1e-6)


def test_rotate_90_is_rot90():
    x = _images(2, 6, 6)
    torch.testing.assert_close(
        apply_dsa(x, _params('rotate', 6, 6, angle=90.0)), torch.rot90(x, 1, dims=(2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        apply_dsa(x, _params('rotate', 6, 6, angle=-90.0)), torch.rot90(x, -1, dims=(2, 3)), rtol=0, atol=1e-5)
    angles = [
        sample_dsa_params(DSAConfig(strategy='rotate'), 6, 6,
                          torch.Generator().manual_seed(s))['ops'][0][1]['angle'] for s in range(100)
    ]
    assert all(-15 <= a <= 15 for a in angles) and min(angles) < -10 and max(angles) > 10


def test_color_by_hand():
    x = _images(2, 3, 4, dtype=torch.float64)
    b, s, c = 0.3, 1.7, 0.8
    out = apply_dsa(x, _params('color', 3, 4, brightness_shift=b, saturation_factor=s, contrast_factor=c))
    y = x + b
    expected = torch.empty_like(y)
    for n in range(2):
        for i in range(3):
            for j in range(4):
                m = (y[n, 0, i, j] + y[n, 1, i, j] + y[n, 2, i, j]) / 3
                expected[n, :, i, j] = m + (y[n, :, i, j] - m) * s
    y = expected.clone()
    for n in range(2):
        m = y[n].sum() / y[n].numel()
        expected[n] = m + (y[n] - m) * c
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)

    draws = [
        sample_dsa_params(DSAConfig(strategy='color'), 3, 4,
                          torch.Generator().manual_seed(k))['ops'][0][1] for k in range(100)
    ]
    for key, low, high in (('brightness_shift', -0.5, 0.5), ('saturation_factor', 0, 2), ('contrast_factor', .5, 1.5)):
        values = [d[key] for d in draws]
        assert all(low <= v <= high for v in values) and max(values) - min(values) > 0.8 * (high - low)


def test_modes_and_seeding():
    cfg = DSAConfig()
    state = torch.get_rng_state()
    p1 = sample_dsa_params(cfg, 8, 8, torch.Generator().manual_seed(11))
    p2 = sample_dsa_params(cfg, 8, 8, torch.Generator().manual_seed(11))
    sample_dsa_params(cfg, 8, 8)  # a fresh generator, still not the global RNG
    dsa_pair(_images(2), _images(3), cfg, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert p1 == p2 and len(p1['ops']) == 1 and p1['family'] == p1['ops'][0][0]

    chosen = [sample_dsa_params(cfg, 8, 8, torch.Generator().manual_seed(s))['family'] for s in range(240)]
    assert all(20 < chosen.count(f) < 60 for f in DSA_FAMILIES)  # uniform: 40 each

    p = sample_dsa_params(DSAConfig(mode='M'), 8, 8, torch.Generator().manual_seed(0))
    assert [f for f, _ in p['ops']] == list(DSA_FAMILIES) and p['family'] == cfg.strategy
    for _, fp in p['ops']:
        assert all(isinstance(v, (bool, int, float, str)) for v in fp.values())

    none = sample_dsa_params(DSAConfig(strategy='none'), 8, 8, torch.Generator().manual_seed(0))
    assert none['ops'] == [] and torch.equal(apply_dsa(_images(2), none), _images(2))


def test_errors():
    with pytest.raises(ValueError):
        DSAConfig(strategy='color_blur')
    with pytest.raises(ValueError):
        DSAConfig(mode='X')
    params = sample_dsa_params(DSAConfig(), 8, 8, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError):
        apply_dsa(_images(2, 8, 9), params)
    with pytest.raises(ValueError):
        dsa_pair(_images(2, 8, 8), _images(2, 8, 9))
    assert math.isclose(DSAConfig().ratio_scale, 1.2)

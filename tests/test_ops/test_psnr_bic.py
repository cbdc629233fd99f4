"""PSNR_bic (Minimax-SR Eq. 1) against hand computations with BasicSR's imresize."""
import numpy as np
import pytest

import basicsr_distill  # noqa: F401  (compat fixes first)

# isort: split
from conftest import data_path

from basicsr.utils.matlab_functions import imresize
from basicsr_distill.ops.psnr_bic import bicubic_resize_matrix, bicubic_round_trip, psnr_bic, psnr_bic_batch
from basicsr_distill.utils.image_io import read_rgb


@pytest.fixture(scope='module')
def t91_patches():
    """Six 32x32 patches of real T91 images (float32 RGB in [0, 1])."""
    img = read_rgb(data_path('data', 'train', 't91', 't1.png'))
    return np.stack([img[y:y + 32, x:x + 32] for y in (0, 64, 128) for x in (0, 96)])


def _hand_psnr(x, scale):
    """10 log10(1 / MSE) of x and imresize(imresize(x, 1/s), s), all in numpy float64."""
    recon = imresize(imresize(x.astype(np.float32), 1 / scale), scale).astype(np.float64)
    mse = np.sum((x.astype(np.float64) - recon)**2) / x.size
    return 10 * np.log10(1 / mse)


def test_constant_patch_reconstructs_exactly():
    for value in (0., 0.5, 1.):
        patch = np.full((16, 16, 3), value, np.float32)
        assert psnr_bic(patch) == float('inf')
        assert psnr_bic_batch(patch[None]).tolist() == [float('inf')]
    # other constants keep only imresize's float32 round-off: finite but far above any threshold
    assert psnr_bic(np.full((16, 16, 3), 0.3, np.float32)) > 120


def test_matches_hand_computation(t91_patches):
    for patch in t91_patches:
        expected = _hand_psnr(patch, 4)
        assert 10 < expected < 60
        assert psnr_bic(patch) == pytest.approx(expected, abs=1e-9)
    np.testing.assert_allclose(psnr_bic_batch(t91_patches), [_hand_psnr(p, 4) for p in t91_patches], atol=1e-4)


def test_texture_scores_lower_than_smooth():
    yy, xx = np.mgrid[0:32, 0:32] / 31.
    smooth = np.repeat((0.2 + 0.3 * xx + 0.2 * yy)[..., None], 3, axis=2)
    noise = np.random.default_rng(0).random((32, 32, 3))
    assert psnr_bic(noise) < 15 < 35 < psnr_bic(smooth)


def test_resize_matrices_reproduce_imresize():
    rng = np.random.default_rng(1)
    for scale, (h, w) in ((2, (6, 10)), (3, (9, 24)), (4, (8, 8)), (4, (20, 36))):
        x = rng.random((h, w, 3)).astype(np.float32)
        lr = imresize(x, 1 / scale)
        down = np.einsum('ih,hwc,jw->ijc', bicubic_resize_matrix(h, 1 / scale), x, bicubic_resize_matrix(w, 1 / scale))
        np.testing.assert_allclose(down, lr, atol=1e-6)
        up = np.einsum('ih,hwc,jw->ijc', bicubic_resize_matrix(h // scale, scale), lr,
                       bicubic_resize_matrix(w // scale, scale))
        np.testing.assert_allclose(up, imresize(lr, scale), atol=1e-6)
        np.testing.assert_allclose(bicubic_round_trip(x[None], scale)[0], imresize(lr, scale), atol=1e-6)


def test_batch_handles_chunks_and_other_scales(t91_patches):
    whole = psnr_bic_batch(t91_patches)
    np.testing.assert_array_equal(psnr_bic_batch(t91_patches, chunk=4), whole)
    assert psnr_bic_batch(t91_patches[:0]).shape == (0, )
    np.testing.assert_allclose(
        psnr_bic_batch(t91_patches[:2], scale=2), [psnr_bic(p, 2) for p in t91_patches[:2]], atol=1e-4)
    assert (psnr_bic_batch(t91_patches[:2], scale=2) > whole[:2]).all()  # x2 loses less than x4


def test_invalid_inputs():
    with pytest.raises(ValueError, match='multiples of scale=4'):
        psnr_bic(np.zeros((18, 16, 3)))
    with pytest.raises(ValueError, match='at least 8'):
        psnr_bic(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r'\(H, W, 3\)'):
        psnr_bic(np.zeros((16, 16)))
    with pytest.raises(ValueError, match='scale'):
        psnr_bic(np.zeros((16, 16, 3)), scale=1)
    with pytest.raises(ValueError, match=r'\(N, H, W, 3\)'):
        psnr_bic_batch(np.zeros((16, 16, 3)))

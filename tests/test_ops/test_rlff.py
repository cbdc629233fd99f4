import math
import torch

import basicsr_distill  # noqa: F401

# isort: split
from basicsr_distill.ops.rlff import RandomLocalFourierFeatures, fourier_filter, sample_channels


def test_fourier_filter_is_dft_of_identity_kernel():
    c, k = 2, 3
    c_prime = c * k * k
    filt = fourier_filter(c, k)
    assert filt.shape == (2 * c_prime, c, k, k)
    flat = filt.reshape(2 * c_prime, c_prime).double()  # column j = flat (channel, row, col) index
    m = torch.arange(c_prime, dtype=torch.float64)[:, None]
    j = torch.arange(c_prime, dtype=torch.float64)[None, :]
    angle = 2 * math.pi * m * j / c_prime
    expected = torch.cat([torch.cos(angle), torch.sin(angle)]) / math.sqrt(c_prime)  # [Re, -Im] of the unitary DFT
    assert torch.allclose(flat, expected, atol=1e-6)
    # the stacked [Re; -Im] rows preserve inner products of k x k x c neighbourhoods (F^T F = I)
    gram = flat.t() @ flat
    assert torch.allclose(gram, torch.eye(c_prime, dtype=torch.float64), atol=1e-6)


def test_channel_subset_seeded_distinct_and_nonzero():
    filt = fourier_filter(4, 3)
    a = sample_channels(filt, 20, torch.Generator().manual_seed(0))
    b = sample_channels(filt, 20, torch.Generator().manual_seed(0))
    c = sample_channels(filt, 20, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a.tolist())) == 20
    assert (filt[a].flatten(1).abs().amax(1) > 0).all()
    c_prime = 36
    assert c_prime not in a.tolist()  # imag part of the DC row is zero and never drawn


def test_local_features_shapes_and_unfold_order():
    rlff = RandomLocalFourierFeatures(
        num_channels=3, kernel_size=3, num_out=5, patch_size=4, generator=torch.Generator().manual_seed(0))
    feat = torch.randn(2, 3, 8, 12)
    rlff.fit_bn(feat)
    fourier = rlff.local_fourier(feat)
    assert fourier.shape == (2, 5, 8, 12)
    local = rlff(feat)
    assert local.shape == (2 * 2 * 3, 16, 5)  # N' = N ceil(h/p) ceil(w/p), p*p samples of C_out
    # local patch 4 is image 0, patch row 1, patch col 1: sample 0 = position (4, 4)
    assert torch.allclose(local[4, 0], fourier[0, :, 4, 4])
    assert torch.allclose(local[4, 5], fourier[0, :, 5, 5])
    # conv with the sampled rows of F after BN with the real statistics
    normed = (feat - feat.mean(
        (0, 2, 3), keepdim=True)) / torch.sqrt(feat.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    ref = torch.nn.functional.conv2d(normed, fourier_filter(3, 3)[rlff.channels], padding=1)
    assert torch.allclose(fourier, ref, atol=1e-5)


def test_non_multiple_sizes_are_padded():
    rlff = RandomLocalFourierFeatures(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    feat = torch.randn(1, 2, 6, 5)
    rlff.fit_bn(feat)
    assert rlff(feat).shape == (4, 16, 4)

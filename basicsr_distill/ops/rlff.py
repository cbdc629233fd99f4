"""Random Local Fourier Features (IDC Sec. 3.3, Eq. 4-5).

Teacher features f(x) (N, c, h, w) are batch-normalised, convolved with a random subset of the Fourier filter
F = [Re(FFT(E)), -Im(FFT(E))] of the identity kernel E, cut into p x p local patches and unfolded (Eq. 5).
Decisions where the paper is silent (docs/Methods_IDC.md): unitary FFT; zero filters never drawn; affine-free batch
norm with the real features' statistics for both sets; 'same' zero padding; maps padded by replication to multiples
of p.
"""
import math
import torch
from torch.nn import functional as F


def fourier_filter(num_channels, kernel_size):
    """Fourier filter F of Eq. 4: (2 C', c, k, k), default dtype, C' = c k^2 (c: ``num_channels``, k: ``kernel_size``).

    ``F[m, j] = cos(2 pi m j / C') / sqrt(C')`` and ``F[C' + m, j] = sin(2 pi m j / C') / sqrt(C')``, j the flat
    (channel, row, column) index of the kernel.
    """
    c_prime = num_channels * kernel_size**2
    identity = torch.eye(c_prime, dtype=torch.float64).reshape(c_prime, num_channels, kernel_size, kernel_size)
    spectrum = torch.fft.fft(identity, dim=0, norm='ortho')
    return torch.cat([spectrum.real, -spectrum.imag], dim=0).to(torch.get_default_dtype())


def sample_channels(filt, num_out, generator=None):
    """Draw ``num_out`` distinct non-zero output channels of ``filt`` (2C', c, k, k) with ``generator``.

    Returns:
        Tensor: (num_out,) int64 channel indices, sorted.

    Raises:
        ValueError: If fewer than ``num_out`` non-zero channels exist.
    """
    nonzero = torch.nonzero(filt.flatten(1).abs().amax(1) > 1e-9).squeeze(1)
    if num_out > nonzero.numel():
        raise ValueError(f'rlff.num_channels={num_out} exceeds the {nonzero.numel()} non-zero Fourier channels '
                         f'(c * k^2 * 2 minus zero rows)')
    perm = torch.randperm(nonzero.numel(), generator=generator)[:num_out]
    return torch.sort(nonzero[perm]).values


class RandomLocalFourierFeatures:
    """Random Local Fourier Features for one instance (IDC Eq. 4-5); call :meth:`fit_bn` before :meth:`__call__`.

    Args:
        num_channels (int): c, channels of the teacher feature map.
        kernel_size (int): k, neighbourhood mixed by the Fourier filter. Default: 3.
        num_out (int): C_out, output channels kept of the 2 c k^2. Default: 64.
        patch_size (int): p, size of the local feature patches. Default: 8.
        generator (torch.Generator | None): Draws the channel subset (once, at construction).
        device (torch.device | str): Device of the filter.
    """

    def __init__(self, num_channels, kernel_size=3, num_out=64, patch_size=8, generator=None, device='cpu'):
        full = fourier_filter(num_channels, kernel_size)
        self.channels = sample_channels(full, num_out, generator)
        self.weight = full[self.channels].to(device)  # (C_out, c, k, k)
        self.kernel_size = kernel_size
        self.patch_size = patch_size
        self.mean = None
        self.std = None

    def fit_bn(self, feat_real, eps=1e-5):
        """Fix the batch-norm statistics: per-channel mean and std of the real features (N, c, h, w)."""
        self.mean = feat_real.mean(dim=(0, 2, 3), keepdim=True)
        self.std = torch.sqrt(feat_real.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + eps)

    def local_fourier(self, feat):
        """f'(x) = BN(f(x)) (*) F (Eq. 5): (N, c, h, w) -> (N, C_out, h, w); RuntimeError before :meth:`fit_bn`."""
        if self.mean is None:
            raise RuntimeError('RandomLocalFourierFeatures.fit_bn must be called with the real features first')
        normed = (feat - self.mean) / self.std
        return F.conv2d(normed, self.weight, padding=self.kernel_size // 2)

    def to_local_patches(self, feat):
        """(N, C, h, w) -> (N * ceil(h/p) * ceil(w/p), p * p, C): local patches, image by image, row-major."""
        p = self.patch_size
        n, c, h, w = feat.shape
        pad_h, pad_w = math.ceil(h / p) * p - h, math.ceil(w / p) * p - w
        if pad_h or pad_w:
            feat = F.pad(feat, (0, pad_w, 0, pad_h), mode='replicate')
        nh, nw = feat.shape[2] // p, feat.shape[3] // p
        patches = feat.reshape(n, c, nh, p, nw, p).permute(0, 2, 4, 3, 5, 1)  # n, nh, nw, p, p, c
        return patches.reshape(n * nh * nw, p * p, c)

    def __call__(self, feat):
        """Teacher features (N, c, h, w) -> unfolded local Fourier features (N', p * p, C_out)."""
        return self.to_local_patches(self.local_fourier(feat))

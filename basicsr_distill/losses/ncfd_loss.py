"""Neural Characteristic Function Discrepancy (NCFD).

IDC (Peng et al.) Eq. 2-3 and Eq. 6, as NCFM (Wang et al., CVPR 2025) implements it without the sampling network:

    Chf(t) = alpha * (|Phi_X(t)| - |Phi_Y(t)|)^2 + (1 - alpha) * 2 |Phi_X(t)| |Phi_Y(t)| (1 - cos(a_X(t) - a_Y(t)))
    NCFD(X, Y) = mean_t sqrt(Chf(t)),     t ~ N(0, I_D),

with Phi_X(t) = mean_i exp(j <t, x_i>) over the L2-normalised feature rows. The phase term is computed as
2 (|Phi_X| |Phi_Y| - Re_X Re_Y - Im_X Im_Y) (equal to the cosine form), clamped at 1e-12.
"""
import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import LOSS_REGISTRY

_PHASE_CLAMP = 1e-12
_AMP_EPS = 1e-12


def empirical_cf(feat, freqs, chunk_size=None):
    """Empirical characteristic function of (B, D) feature rows on (F, D) frequencies, B in chunks of ``chunk_size``.

    Returns:
        tuple[Tensor, Tensor]: (F,) real and imaginary parts: mean_i cos(<t, x_i>), mean_i sin(<t, x_i>).
    """
    if chunk_size is None or chunk_size >= feat.shape[0]:
        proj = freqs @ feat.t()  # (F, B)
        return torch.cos(proj).mean(1), torch.sin(proj).mean(1)
    re = feat.new_zeros(freqs.shape[0])
    im = feat.new_zeros(freqs.shape[0])
    for start in range(0, feat.shape[0], chunk_size):
        proj = freqs @ feat[start:start + chunk_size].t()
        re = re + torch.cos(proj).sum(1)
        im = im + torch.sin(proj).sum(1)
    return re / feat.shape[0], im / feat.shape[0]


def ncfd_terms(cf_x, cf_y):
    """Amplitude and phase terms of Eq. 3 from (Re, Im) pairs of (F,) tensors.

    Returns:
        tuple[Tensor, Tensor]: ``amp = (|Phi_X| - |Phi_Y|)^2`` and
        ``pha = max(2 (|Phi_X||Phi_Y| - Re_X Re_Y - Im_X Im_Y), 1e-12)``, each (F,).
    """
    re_x, im_x = cf_x
    re_y, im_y = cf_y
    mod_x = torch.sqrt(re_x**2 + im_x**2 + _AMP_EPS)
    mod_y = torch.sqrt(re_y**2 + im_y**2 + _AMP_EPS)
    amp = (mod_x - mod_y)**2
    pha = torch.clamp(2 * (mod_x * mod_y - re_x * re_y - im_x * im_y), min=_PHASE_CLAMP)
    return amp, pha


def ncfd_from_cf(cf_x, cf_y, alpha=0.5):
    """NCFD of (Re, Im) pairs of (..., F) tensors on the same frequencies: mean_F sqrt(alpha amp + (1 - alpha) pha)."""
    amp, pha = ncfd_terms(cf_x, cf_y)
    return torch.sqrt(alpha * amp + (1 - alpha) * pha).mean(-1)


def sample_frequencies(num_freqs, dim, generator=None, device=None, dtype=torch.float32):
    """Draw the NCFD frequency arguments t ~ N(0, I): (num_freqs, dim), from ``generator`` (not the global RNG)."""
    gen_device = generator.device if generator is not None else device
    t = torch.randn(num_freqs, dim, generator=generator, device=gen_device, dtype=dtype)
    return t.to(device) if device is not None else t


def ncfd(feat_real, feat_syn, num_freqs=4096, alpha=0.5, generator=None, freqs=None, normalize=True, chunk_size=None):
    """NCFD between a real and a synthetic feature set (IDC Eq. 2, 3, 6): a scalar >= 0, about 7e-7 for identical sets.

    Args:
        feat_real (Tensor): (B1, D) real features.
        feat_syn (Tensor): (B2, D) synthetic features; differentiable.
        num_freqs (int): F frequencies drawn for this call (4096 in NCFM's configs).
        alpha (float): Amplitude weight; the phase gets 1 - alpha (0.5 in NCFM).
        generator (torch.Generator | None): Source of t, a fresh draw every call.
        freqs (Tensor | None): (F, D) frequencies to use instead of drawing them.
        normalize (bool): L2-normalise every feature row first (as NCFM). Default: True.
        chunk_size (int | None): Sample chunk for the real side (memory bound).

    Raises:
        ValueError: If the sets are empty or their feature sizes differ.
    """
    if feat_real.ndim != 2 or feat_syn.ndim != 2 or feat_real.shape[1] != feat_syn.shape[1]:
        raise ValueError(f'NCFD needs (B1, D) and (B2, D) features, got {tuple(feat_real.shape)} and '
                         f'{tuple(feat_syn.shape)}')
    if feat_real.shape[0] == 0 or feat_syn.shape[0] == 0:
        raise ValueError('NCFD needs at least one real and one synthetic feature row')
    if normalize:
        feat_real = F.normalize(feat_real, dim=1)
        feat_syn = F.normalize(feat_syn, dim=1)
    if freqs is None:
        freqs = sample_frequencies(num_freqs, feat_real.shape[1], generator, feat_syn.device, feat_syn.dtype)
    return ncfd_from_cf(empirical_cf(feat_real, freqs, chunk_size), empirical_cf(feat_syn, freqs), alpha)


@LOSS_REGISTRY.register()
class NCFDLoss(nn.Module):
    """NCFD as a BasicSR loss (:func:`ncfd`), with its own seeded generator for t.

    Args:
        loss_weight (float): Multiplier (NCFM uses 300).
        num_freqs (int): Frequencies per call. Default: 4096.
        alpha (float): Amplitude weight. Default: 0.5.
        seed (int): Seed of the generator. Default: 0.
    """

    def __init__(self, loss_weight=1.0, num_freqs=4096, alpha=0.5, seed=0):
        super().__init__()
        self.loss_weight = loss_weight
        self.num_freqs = num_freqs
        self.alpha = alpha
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, feat_real, feat_syn):
        """feat_real (B1, D), feat_syn (B2, D) -> scalar loss."""
        freqs = sample_frequencies(self.num_freqs, feat_syn.shape[1], self.generator, feat_syn.device, feat_syn.dtype)
        return self.loss_weight * ncfd(feat_real, feat_syn, alpha=self.alpha, freqs=freqs)

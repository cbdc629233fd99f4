"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021) for distribution matching.

One draw (:func:`sample_dsa_params`) is applied with :func:`apply_dsa` to any number of batches or chunks: every image
gets the same transform (siamese); :func:`dsa_pair` does both for a (real, synthetic) pair. Differentiable w.r.t. the
images. Families (``strategy`` joins them with ``_``):

* ``color``: ``x + (u - 0.5) brightness``; then ``m + (x - m) u saturation`` (m: per-pixel channel mean); then
  ``m + (x - m) (u + contrast)`` (m: per-image mean), each with its own u ~ U(0, 1).
* ``crop``: integer translation by (dy, dx), each uniform in [-round(ratio H), round(ratio H)] (W for dx), zero fill.
* ``cutout``: zero a round(ratio H) x round(ratio W) rectangle around a random centre, clipped at the border (centre
  range as the reference's).
* ``flip``: horizontal flip with probability ``prob_flip``.
* ``scale``: ``grid_sample`` with theta = [[sx, 0, 0], [0, sy, 0]], sx, sy uniform in [1 / ratio, ratio].
* ``rotate``: ``grid_sample`` with theta = [[cos a, -sin a, 0], [sin a, cos a, 0]], a uniform in [-deg, deg].

Mode ``'S'`` applies one family drawn uniformly; ``'M'`` all, in order, as the reference's ``aug_mode``.

Departures from the reference (docs/Methods_GSDD.md):

* RGB in [0, 1], not normalised images: ``brightness=0.23`` matches the reference's strength, and padding is black,
  not the mean colour. Outputs are not clamped (clamping would cut gradients).
* sx, sy and dx, dy are drawn independently, as the paper says (the reference's reseeding makes them equal), from the
  given ``torch.Generator`` only, never the global RNG.
"""
import math
import torch
from dataclasses import dataclass
from torch.nn import functional as F

DSA_FAMILIES = ('color', 'crop', 'cutout', 'flip', 'scale', 'rotate')
_NO_AUGMENTATION = ('', 'none', 'None')


@dataclass
class DSAConfig:
    """Hyper-parameters of DSA (defaults: the reference's).

    Args:
        strategy (str): Families joined by ``_``; ``''`` or ``'none'``: no augmentation.
            Default: ``'color_crop_cutout_flip_scale_rotate'``.
        mode (str): ``'S'`` (one family per call) or ``'M'`` (every family). Default: ``'S'``.
        prob_flip (float): Probability of the flip, in [0, 1]. Default: 0.5.
        ratio_scale (float): Scale factors in [1 / ratio_scale, ratio_scale]; >= 1. Default: 1.2.
        ratio_rotate (float): Angles in [-ratio_rotate, ratio_rotate] degrees. Default: 15.
        ratio_crop_pad (float): Maximum translation as a fraction of the size, in [0, 1). Default: 0.125.
        ratio_cutout (float): Cutout side as a fraction of the size, in [0, 1]. Default: 0.5.
        brightness (float): Brightness offset range. Default: 1.0.
        saturation (float): Saturation factor range. Default: 2.0.
        contrast (float): Contrast factor offset. Default: 0.5.
        align_corners (bool): Of ``affine_grid`` / ``grid_sample``. Default: True.
        padding_mode (str): Of ``grid_sample``. Default: ``'zeros'``.

    Raises:
        ValueError: On an unknown family or mode, or a ratio outside its range.
    """
    strategy: str = 'color_crop_cutout_flip_scale_rotate'
    mode: str = 'S'
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    align_corners: bool = True
    padding_mode: str = 'zeros'

    def __post_init__(self):
        unknown = [f for f in self.families if f not in DSA_FAMILIES]
        if unknown:
            raise ValueError(f'unknown DSA families {unknown} in strategy {self.strategy!r}; known: {DSA_FAMILIES}')
        if self.mode not in ('M', 'S'):
            raise ValueError(f"DSA mode must be 'S' (one family per call) or 'M' (every family), got {self.mode!r}")
        if not 0 <= self.prob_flip <= 1:
            raise ValueError(f'prob_flip must be in [0, 1], got {self.prob_flip}')
        if self.ratio_scale < 1:
            raise ValueError(f'ratio_scale must be >= 1, got {self.ratio_scale}')
        if not 0 <= self.ratio_crop_pad < 1:
            raise ValueError(f'ratio_crop_pad must be in [0, 1), got {self.ratio_crop_pad}')
        if not 0 <= self.ratio_cutout <= 1:
            raise ValueError(f'ratio_cutout must be in [0, 1], got {self.ratio_cutout}')

    @property
    def families(self):
        """tuple[str]: The families of ``strategy`` in order (empty for no augmentation)."""
        if self.strategy in _NO_AUGMENTATION:
            return ()
        return tuple(self.strategy.split('_'))


def _uniform(generator, low=0.0, high=1.0):
    """One float uniform in [low, high) drawn with ``generator`` only."""
    u = torch.rand(1, generator=generator, dtype=torch.float64, device=generator.device).item()
    return low + (high - low) * u


def _randint(generator, low, high):
    """One int uniform in {low, ..., high} (inclusive) drawn with ``generator`` only."""
    return int(torch.randint(low, high + 1, (1, ), generator=generator, device=generator.device).item())


def _sample_family(family, cfg, height, width, generator):
    """Parameters of one family (python numbers only)."""
    if family == 'color':
        return {
            'brightness_shift': (_uniform(generator) - 0.5) * cfg.brightness,
            'saturation_factor': _uniform(generator) * cfg.saturation,
            'contrast_factor': _uniform(generator) + cfg.contrast,
        }
    if family == 'crop':
        max_dy, max_dx = int(height * cfg.ratio_crop_pad + 0.5), int(width * cfg.ratio_crop_pad + 0.5)
        return {'dy': _randint(generator, -max_dy, max_dy), 'dx': _randint(generator, -max_dx, max_dx)}
    if family == 'cutout':
        side_h, side_w = int(height * cfg.ratio_cutout + 0.5), int(width * cfg.ratio_cutout + 0.5)
        cy = _randint(generator, 0, height - side_h % 2)
        cx = _randint(generator, 0, width - side_w % 2)
        y0, x0 = cy - side_h // 2, cx - side_w // 2
        return {
            'cy': cy,
            'cx': cx,
            'y0': max(y0, 0),
            'y1': min(y0 + side_h, height),
            'x0': max(x0, 0),
            'x1': min(x0 + side_w, width)
        }
    if family == 'flip':
        return {'flip': _uniform(generator) < cfg.prob_flip}
    if family == 'scale':
        low = 1.0 / cfg.ratio_scale
        return {
            'sx': _uniform(generator, low, cfg.ratio_scale),
            'sy': _uniform(generator, low, cfg.ratio_scale),
            'align_corners': cfg.align_corners,
            'padding_mode': cfg.padding_mode
        }
    if family == 'rotate':
        return {
            'angle': _uniform(generator, -cfg.ratio_rotate, cfg.ratio_rotate),
            'align_corners': cfg.align_corners,
            'padding_mode': cfg.padding_mode
        }
    raise ValueError(f'unknown DSA family {family!r}; known: {DSA_FAMILIES}')


def sample_dsa_params(cfg, height, width, generator=None):
    """Draw one siamese set of DSA parameters for (height, width) images.

    Args:
        cfg (DSAConfig | dict | None): Configuration; a dict goes to ``DSAConfig(**cfg)``; None: defaults.
        height, width (int): Size of the images.
        generator (torch.Generator | None): The only source of randomness, any device; None: a fresh one with a
            non-deterministic seed.

    Returns:
        dict: ``{'family': str, 'height': int, 'width': int, 'ops': list[tuple[str, dict]]}``; ``ops`` in the order
        applied, ``family`` their names joined by ``_``. Python numbers, strings and bools only.

    Raises:
        ValueError: If height or width is not positive, or the configuration is invalid.
    """
    if cfg is None:
        cfg = DSAConfig()
    elif isinstance(cfg, dict):
        cfg = DSAConfig(**cfg)
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f'image size must be positive, got ({height}, {width})')
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    families = cfg.families
    if families and cfg.mode == 'S':
        families = (families[_randint(generator, 0, len(families) - 1)], )
    ops = [(family, _sample_family(family, cfg, height, width, generator)) for family in families]
    return {'family': '_'.join(families), 'height': height, 'width': width, 'ops': ops}


def _apply_color(x, p):
    x = x + p['brightness_shift']
    mean = x.mean(dim=1, keepdim=True)
    x = mean + (x - mean) * p['saturation_factor']
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * p['contrast_factor']


def _apply_crop(x, p):
    dy, dx = p['dy'], p['dx']
    height, width = x.shape[-2:]
    if abs(dy) >= height or abs(dx) >= width:
        return x * 0
    # negative padding removes rows/columns: out[i] = x[i + dy] with zeros where i + dy leaves the image
    return F.pad(x, (-dx, dx, -dy, dy))


def _apply_cutout(x, p):
    mask = torch.ones(x.shape[-2:], dtype=x.dtype, device=x.device)
    mask[p['y0']:p['y1'], p['x0']:p['x1']] = 0
    return x * mask


def _apply_affine(x, theta, p):
    theta = torch.tensor(theta, dtype=x.dtype, device=x.device).expand(x.size(0), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=p['align_corners'])
    return F.grid_sample(x, grid, mode='bilinear', padding_mode=p['padding_mode'], align_corners=p['align_corners'])


def _apply_scale(x, p):
    return _apply_affine(x, [[p['sx'], 0.0, 0.0], [0.0, p['sy'], 0.0]], p)


def _apply_rotate(x, p):
    a = math.radians(p['angle'])
    return _apply_affine(x, [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], p)


_APPLY = {
    'color': _apply_color,
    'crop': _apply_crop,
    'cutout': _apply_cutout,
    'flip': lambda x, p: torch.flip(x, [3]) if p['flip'] else x,
    'scale': _apply_scale,
    'rotate': _apply_rotate,
}


def apply_dsa(x, params):
    """Apply one draw of :func:`sample_dsa_params` to a batch; each image's result depends on itself alone.

    Args:
        x (Tensor): (N, C, H, W) float RGB in [0, 1], any N (0 included); H, W as sampled.
        params (dict): The output of :func:`sample_dsa_params`.

    Returns:
        Tensor: (N, C, H, W), dtype and device of ``x``; not clamped.

    Raises:
        ValueError: If ``x`` is not 4-D or its (H, W) differs from the sampled size.
        TypeError: If ``x`` is not floating point.
    """
    if x.dim() != 4:
        raise ValueError(f'DSA expects (N, C, H, W) images, got shape {tuple(x.shape)}')
    if not x.is_floating_point():
        raise TypeError(f'DSA expects floating point images, got {x.dtype}')
    if tuple(x.shape[-2:]) != (params['height'], params['width']):
        raise ValueError(f'the DSA draw was sampled for size ({params["height"]}, {params["width"]}), '
                         f'got images of size {tuple(x.shape[-2:])}')
    if x.size(0) == 0:
        return x.clone()
    for family, p in params['ops']:
        x = _APPLY[family](x, p)
    return x


def dsa_pair(x_real, x_syn, cfg=None, generator=None):
    """Augment a real (N_r, C, H, W) and a synthetic (N_s, C, H, W) batch in [0, 1] with one shared draw.

    ``cfg`` and ``generator`` as in :func:`sample_dsa_params`; returns the two augmented batches.

    Raises:
        ValueError: If the two batches differ in (H, W), or as :func:`apply_dsa`.
    """
    if x_real.dim() != 4 or x_syn.dim() != 4 or x_real.shape[-2:] != x_syn.shape[-2:]:
        raise ValueError(f'real and synthetic batches must be (N, C, H, W) with the same H, W, got '
                         f'{tuple(x_real.shape)} and {tuple(x_syn.shape)}')
    params = sample_dsa_params(cfg, x_real.size(2), x_real.size(3), generator)
    return apply_dsa(x_real, params), apply_dsa(x_syn, params)

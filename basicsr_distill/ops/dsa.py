"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021) for distribution matching.

One *draw* of augmentation parameters is sampled with :func:`sample_dsa_params` and applied with :func:`apply_dsa`
to any number of batches (the real and the synthetic batch of one iteration, or chunks of either): every image of
every batch gets exactly the same transform ("siamese"). Sampling and applying are separate so that a caller can
apply one draw chunk by chunk; :func:`dsa_pair` is the one-call version for a (real, synthetic) pair. Every
transform is differentiable w.r.t. the images (the parameters are constants).

Families (the ``strategy`` string joins them with ``_``; default ``color_crop_cutout_flip_scale_rotate``):

* ``color``: brightness, then saturation, then contrast, each with its own u ~ U(0, 1):
  ``x + (u - 0.5) * brightness``; ``m + (x - m) * (u * saturation)`` with m the per-pixel mean over channels;
  ``m + (x - m) * (u + contrast)`` with m the per-image mean over (C, H, W).
* ``crop``: integer translation ``out[..., i, j] = x[..., i + dy, j + dx]`` (zero where that falls outside),
  dy in [-round(ratio * H), round(ratio * H)], dx likewise with W, drawn independently and uniformly.
* ``cutout``: zeroes a rectangle of round(ratio * H) x round(ratio * W) pixels (a square for square images) around
  a random centre; the rectangle is clipped at the border.
* ``flip``: horizontal flip (``torch.flip(x, [3])``) with probability ``prob_flip``.
* ``scale``: ``affine_grid`` + ``grid_sample`` with theta = [[sx, 0, 0], [0, sy, 0]], sx and sy drawn
  independently and uniformly in [1 / ratio, ratio] (sampling coordinates are multiplied, so s > 1 shrinks the
  content).
* ``rotate``: ``affine_grid`` + ``grid_sample`` with theta = [[cos a, -sin a, 0], [sin a, cos a, 0]], a uniform in
  [-deg, deg]; a = +90 degrees on a square image equals ``torch.rot90(x, 1, dims=(2, 3))``.

Modes, as the reference's ``aug_mode``: ``'S'`` ("single") draws ONE family per call, uniformly among the families
of the string (the default); ``'M'`` ("multiple") applies every family of the string, in the string's order, each
with its own parameters.

Decisions where the paper and the reference code differ or are silent (each one a :class:`DSAConfig` field or
documented here):

* Images are RGB in [0, 1]. The reference works on mean/std-normalised images, so the same ``brightness`` offset
  is about four times weaker there (std ~0.23; ``brightness=0.23`` here matches it), and its zero padding (crop,
  cutout, rotate/scale borders) is the dataset mean colour, whereas here it is black. Saturation and contrast
  scale deviations from a mean, so they act alike in both. Outputs are not clamped (clamping would cut gradients).
* One draw is shared by every image of every batch (the reference's siamese mode with a given seed). The reference
  reseeds the global RNG before each draw, which makes sx == sy and dx == dy; here they are independent, as the
  paper describes, and only the given ``torch.Generator`` is used (never the global RNG).
* ``grid_sample`` uses bilinear interpolation, ``align_corners=True`` and zero padding, as the reference.
* The cutout centre c is uniform in {0, ..., H - 1} for an odd side s and {0, ..., H} for an even one, covering
  rows c - s // 2 ... c - s // 2 + s - 1 (so the square overhangs both borders by up to s // 2 alike), as the
  reference; columns likewise.
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
        strategy (str): families joined by ``_``, from ``color, crop, cutout, flip, scale, rotate``; ``''`` or
            ``'none'`` for no augmentation. Default: ``'color_crop_cutout_flip_scale_rotate'``.
        mode (str): ``'S'``: one family per call, uniformly among those of ``strategy``; ``'M'``: every family of
            ``strategy`` in order (the reference's letters). Default: ``'S'``.
        prob_flip (float): probability of the horizontal flip, in [0, 1]. Default: 0.5.
        ratio_scale (float): scale factors are drawn in [1 / ratio_scale, ratio_scale]; >= 1. Default: 1.2.
        ratio_rotate (float): rotation angles are drawn in [-ratio_rotate, ratio_rotate] degrees. Default: 15.
        ratio_crop_pad (float): maximum translation as a fraction of the size, in [0, 1). Default: 0.125.
        ratio_cutout (float): cutout side as a fraction of the size, in [0, 1]. Default: 0.5.
        brightness (float): brightness offset range (offset = (u - 0.5) * brightness). Default: 1.0.
        saturation (float): saturation factor range (factor = u * saturation). Default: 2.0.
        contrast (float): contrast factor offset (factor = u + contrast). Default: 0.5.
        align_corners (bool): ``align_corners`` of ``affine_grid``/``grid_sample`` (scale, rotate). Default: True.
        padding_mode (str): ``padding_mode`` of ``grid_sample`` (scale, rotate). Default: ``'zeros'``.

    Raises:
        ValueError: on an unknown family or mode, or a ratio outside its range.
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
        """tuple[str]: the families of ``strategy`` in order (empty for no augmentation)."""
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
    """Draw one siamese set of DSA parameters for images of size (height, width).

    In mode ``'S'`` the family is drawn first (``torch.randint`` over the families of the strategy), then its
    parameters; in mode ``'M'`` the parameters of every family are drawn in the strategy's order.

    Args:
        cfg (DSAConfig | dict | None): configuration; a dict is passed to ``DSAConfig(**cfg)``, None means defaults.
        height (int): H of the images the draw will be applied to.
        width (int): W of the images.
        generator (torch.Generator | None): the only source of randomness (any device; the draws are moved to
            python numbers). None: a fresh generator with a non-deterministic seed. The global RNG is never used.

    Returns:
        dict: ``{'family': str, 'height': int, 'width': int, 'ops': list[tuple[str, dict]]}``, where ``ops`` lists
        (family, parameters) in the order they are applied and ``family`` is their names joined by ``_`` (the
        chosen family in mode ``'S'``; ``''`` for no augmentation). Only python numbers, strings and bools.

    Raises:
        ValueError: if height or width is not positive, or the configuration is invalid.
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
    """Apply one draw of :func:`sample_dsa_params` to a batch; every image gets the same transform.

    Differentiable w.r.t. ``x``; the result depends on each image alone, so applying a draw to chunks of a batch
    equals applying it to the whole batch.

    Args:
        x (Tensor): (N, C, H, W) float images, RGB in [0, 1] (C = 3 for ``color``'s saturation to mean what it says;
            any C works), any N (N = 0 included), on any device; H, W as sampled.
        params (dict): the output of :func:`sample_dsa_params`.

    Returns:
        Tensor: (N, C, H, W) augmented images, same dtype and device as ``x``; not clamped, so ``color`` can leave
        [0, 1].

    Raises:
        ValueError: if ``x`` is not 4-D or its (H, W) differs from the sampled size.
        TypeError: if ``x`` is not floating point.
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
    """Augment a real and a synthetic batch with one shared draw (siamese).

    Args:
        x_real (Tensor): (N_r, C, H, W) float images in [0, 1].
        x_syn (Tensor): (N_s, C, H, W) float images in [0, 1] (N_s may differ from N_r; same H, W).
        cfg (DSAConfig | dict | None): configuration; None means the defaults.
        generator (torch.Generator | None): see :func:`sample_dsa_params`.

    Returns:
        tuple[Tensor, Tensor]: the augmented real and synthetic batches, shapes as the inputs.

    Raises:
        ValueError: if the two batches differ in (H, W), or as :func:`apply_dsa`.
    """
    if x_real.dim() != 4 or x_syn.dim() != 4 or x_real.shape[-2:] != x_syn.shape[-2:]:
        raise ValueError(f'real and synthetic batches must be (N, C, H, W) with the same H, W, got '
                         f'{tuple(x_real.shape)} and {tuple(x_syn.shape)}')
    params = sample_dsa_params(cfg, x_real.size(2), x_real.size(3), generator)
    return apply_dsa(x_real, params), apply_dsa(x_syn, params)

"""Generative Space Dataset Distillation (GSDD, Zhang et al., AAAI 2024) as a BasicSR model; one class per unit.

1. start: IPC real images of class c (seeded), a gt-size crop x_k of each (:meth:`GSDDModel.pair_crop`); latents
   z_k shaped like G's LR input, by GAN inversion (Eq. 3-5) from the bicubic LR of x_k; each keeps x_k for R.
2. every step: a fresh random DMResNet18 and one siamese DSA draw from the class's generator, a batch of real
   crops, L = (1 - lambda) L_dis + lambda R (Eq. 7-9, losses/dm_loss.py), back-propagated to the latents in chunks
   (ops/latent_dm.py); Adam on the latents.
3. end: HR = clamp(G(z), 0, 1), LR = BasicSR ``imresize`` x 1/scale; IPC pairs written with their class.
"""
import numpy as np
import time
import torch
from dataclasses import dataclass
from typing import Any

from basicsr.data import build_dataset
from basicsr.utils.registry import MODEL_REGISTRY
from basicsr_distill.archs.dm_resnet_arch import DMResNet18
from basicsr_distill.data.sr_patches import bicubic_lr
from basicsr_distill.distilled_set import check_source_name
from basicsr_distill.losses.dm_loss import dm_distance, gsdd_objective, paired_distance
from basicsr_distill.models.distill_base_model import DistillBaseModel
from basicsr_distill.ops.dsa import DSAConfig, apply_dsa, sample_dsa_params
from basicsr_distill.ops.latent_dm import backprop_in_chunks, embed_in_chunks, objective_and_feature_grad
from basicsr_distill.ops.psnr_bic import psnr_bic_batch
from basicsr_distill.utils.amp import MixedPrecision
from basicsr_distill.utils.feature_tap import FeatureTap
from basicsr_distill.utils.options import check_optimizer, check_ranges, merge_options

#: Defaults of the ``distill`` section (paper: lambda = 0.1, Adam (0.9, 0.999), lr 1e-3, IPC 100, 500k iterations).
GSDD_DEFAULTS = {
    'ipc': 100,  # latents (distilled images) per class
    'iters_per_class': 500000,  # T
    'batch_real': 64,  # real crops of the class per step
    'lam': 0.1,  # lambda of Eq. 9
    'chunk_size': 8,  # latents per forward / backward pass (memory bound)
    'clamp_latents': True,  # keep z in [0, 1] (G's input is an LR image for SR generators)
    'pair_crop_candidates': 1,  # M: x_k = the lowest-PSNR_bic of M uniform crops of its image (1: the paper's crop)
    'amp': 'off',  # G's passes in the steps under autocast: 'off', 'bf16' or 'fp16' (CUDA; grad scaler), utils/amp.py
    'optim': {
        'type': 'Adam',
        'lr': 1e-3,
        'betas': [0.9, 0.999]
    },
    'extractor': {
        'num_feat': 64,
        'norm': 'instance'
    },  # DMResNet18, re-drawn every step
    'dsa': {},  # DSAConfig fields (reference defaults)
    'inversion': {
        'iters': 200,
        'lr': 0.01,
        'w_feat': 1.0,
        'w_pix': 1.0,
        'feature_layer': None
    },
}

#: Ranges of the counts and weights of :data:`GSDD_DEFAULTS` (``utils.options.check_ranges``; ``ipc`` and ``lam``
#: have messages of their own), checked when the model is built.
GSDD_RANGES = {
    'iters_per_class': '>= 1',
    'batch_real': '>= 1',
    'chunk_size': '>= 1',
    'pair_crop_candidates': '>= 1',
    'extractor.num_feat': '>= 1',
    'inversion.iters': '>= 0',
    'inversion.lr': '> 0',
    'inversion.w_feat': '>= 0',
    'inversion.w_pix': '>= 0',
}


@dataclass
class GSDDClassUnit:
    """The class being distilled; dropped when it is written.

    Attributes:
        index (int), name (str), t0 (float): The unit (0-based class), its name and start time (s).
        generator (torch.Generator): The class's seeded generator (image draw, crops, extractors, DSA, batches).
        pair_paths (list[str]): The real image of each latent (IPC entries, repeated if IPC > images).
        x_pair (Tensor): (IPC, 3, H, W) real crops in [0, 1] paired with the latents (R, Eq. 8).
        z (Parameter): (IPC, 3, h, w) latents (G's LR input).
        optimizer (Optimizer): Adam on z.
    """
    index: int
    name: str
    t0: float
    generator: torch.Generator
    pair_paths: Any = None
    x_pair: Any = None
    z: Any = None
    optimizer: Any = None


@MODEL_REGISTRY.register()
class GSDDModel(DistillBaseModel):
    """GSDD: distribution matching in the latent space of a pretrained GAN SR generator.

    Options: ``network_g`` / ``path.pretrain_network_g`` (frozen G; ``params_ema`` preferred), ``network_f`` /
    ``path.pretrain_network_f`` (D_f's extractor, Eq. 4; optional when ``inversion.w_feat`` is 0), ``datasets.train``
    of type ``SRClassFolderDataset``, ``path.distilled_root``, ``distill`` (:data:`GSDD_DEFAULTS`) and
    ``train.total_iter >= num_classes * distill.iters_per_class``.

    Raises:
        ValueError: Unknown ``distill`` keys or wrong types, values out of :data:`GSDD_RANGES`, ``optim`` options torch
            refuses, a too small ``train.total_iter``, D_f requested without ``network_f``.
        FloatingPointError: (``optimize_parameters``) a non-finite loss or gradient, before the step, naming the class,
            iteration and loss terms.
    """

    def __init__(self, opt):
        super().__init__(opt)
        self.cfg = merge_options(GSDD_DEFAULTS, opt.get('distill'))
        cfg = self.cfg
        if int(cfg['ipc']) < 1:
            raise ValueError(f'distill.ipc must be >= 1, got {cfg["ipc"]}')
        check_ranges(cfg, GSDD_RANGES)
        check_optimizer(cfg['optim'], 'distill.optim')
        if not 0 <= float(cfg['lam']) <= 1:
            raise ValueError(f'distill.lam (lambda) must be in [0, 1], got {cfg["lam"]}')
        if int(cfg['chunk_size']) < 1:
            raise ValueError('distill.chunk_size must be >= 1')
        candidates = cfg['pair_crop_candidates']
        if not isinstance(candidates, int) or isinstance(candidates, bool) or candidates < 1:
            raise ValueError(
                f'distill.pair_crop_candidates must be an integer >= 1, got {cfg["pair_crop_candidates"]!r}')
        self.amp = MixedPrecision(cfg['amp'], self.device)  # ValueError naming distill.amp (fp16 on a CPU)
        self.net_g = self.build_frozen_network('g')
        self.check_network_scale(self.net_g, 'g')
        self.tap_f = None
        if float(cfg['inversion']['w_feat']) > 0:
            if not opt.get('network_f'):
                raise ValueError('distill.inversion.w_feat > 0 needs network_f and path.pretrain_network_f (the '
                                 'pretrained feature extractor of D_f, Eq. 4); set w_feat: 0 to invert on pixels only')
            self.tap_f = FeatureTap(self.build_frozen_network('f'), cfg['inversion']['feature_layer'])
        self.dsa_cfg = DSAConfig(**cfg['dsa'])
        self.extractor = DMResNet18(**cfg['extractor']).eval()  # CPU: seeded re-initialisation every step
        self.extractor_dev = self.extractor if self.device.type == 'cpu' else DMResNet18(
            **cfg['extractor']).to(self.device).eval()
        for net in {self.extractor, self.extractor_dev}:
            for param in net.parameters():
                param.requires_grad_(False)
        self.source = build_dataset(opt['datasets']['train'])
        self.scale = int(opt['scale'])
        self.T = self.steps_per_unit = int(cfg['iters_per_class'])
        needed = self.units_per_rank(self.source.num_classes) * self.T
        if int(opt['train']['total_iter']) < needed:
            raise ValueError(
                f'train.total_iter={opt["train"]["total_iter"]} is too small: ' +
                self.iters_needed_text(self.source.num_classes, 'classes', self.T, 'distill.iters_per_class'))
        self.log_idle_iterations(needed)
        root = self.distilled_root(opt)
        self.unit_names = list(self.source.class_names)
        for name in self.unit_names:  # before any work: class names make the pair names
            check_source_name(f'{name}_gsdd0000', f'class {name!r} of {opt["datasets"]["train"]["dataroot_gt"]}')
        self.writer = self.open_writer(
            root,
            method='gsdd',
            scale=self.scale,
            source={
                'folder': opt['datasets']['train']['dataroot_gt'],
                'num_classes': self.source.num_classes,
                'classes': list(self.source.class_names),
                'num_images': sum(len(self.source.images_of(c)) for c in range(self.source.num_classes)),
                'gt_size': opt['datasets']['train']['gt_size']
            },
            size_control={'ipc': int(cfg['ipc'])},
            options=opt,
            unit_sources=dict(zip(self.unit_names, map(self.source.images_of, range(self.source.num_classes)))))
        self.logger.info(f'GSDD: {self.source.num_classes} classes x {self.T} iterations, IPC {cfg["ipc"]} -> {root} '
                         f'({len(self.writer.finished_units)} classes already written)')

    # ------------------------------------------------------------------------------------------ pieces
    def generate(self, z):
        """G(z): (n, 3, h, w) latents -> (n, 3, s h, s w) images (unclamped while optimising)."""
        return self.net_g(z)

    def _embed(self, images, params):
        """psi(A(images)) with the step's DSA draw and random extractor: (n, 3, H, W) -> (n, D)."""
        return self.extractor_dev(apply_dsa(images, params))

    def _draw_extractor(self, generator):
        self.extractor.reset_parameters(generator)
        if self.extractor_dev is not self.extractor:
            self.extractor_dev.load_state_dict(self.extractor.state_dict())

    def invert(self, x, generator=None, where='GSDD GAN inversion'):
        """GAN inversion (Eq. 3-5): z = argmin_z w_feat D_f + w_pix D_p, from the bicubic LR of x, chunk after chunk.

        Args:
            x (Tensor): (K, 3, H, W) real crops in [0, 1], H and W multiples of the scale.
            generator (torch.Generator | None): The class's generator.
            where (str): The class, for error messages.

        Returns:
            Tensor: (K, 3, H / s, W / s) latents.

        Raises:
            FloatingPointError: A non-finite inversion loss (before its optimiser step).
        """
        inv = self.cfg['inversion']
        chunks = []
        for i in range(0, x.shape[0], self.cfg['chunk_size']):
            target = x[i:i + self.cfg['chunk_size']].to(self.device)
            z0 = torch.stack([
                torch.from_numpy(bicubic_lr(img.permute(1, 2, 0).cpu().numpy(), self.scale)) for img in target
            ]).permute(0, 3, 1, 2).to(self.device)
            z = torch.nn.Parameter(z0)
            optimizer = torch.optim.Adam([z], lr=inv['lr'])
            with torch.no_grad():
                feat_target = self.tap_f(target) if self.tap_f is not None else None
            for it in range(int(inv['iters'])):
                optimizer.zero_grad(set_to_none=True)
                out = self.generate(z)
                dims = tuple(range(1, out.ndim))
                loss = inv['w_pix'] * ((out - target)**2).mean(dims).sum()  # D_p per latent, summed
                if feat_target is not None:
                    loss = loss + inv['w_feat'] * ((self.tap_f(out) - feat_target)**2).mean(dims).sum()  # D_f
                self.check_finite({'l_inversion': loss}, f'{where}, latents {i + 1}-{i + target.shape[0]}, inversion '
                                  f'step {it + 1} of {int(inv["iters"])}')
                loss.backward()
                optimizer.step()
                if self.cfg['clamp_latents']:
                    with torch.no_grad():
                        z.clamp_(0, 1)
            chunks.append(z.detach())
        return torch.cat(chunks)

    def gsdd_step_losses(self, unit, real, params, accumulate=True, where=None):
        """One step's objective (Eq. 7-9) and, if ``accumulate``, dL/dz added to ``unit.z.grad`` (chunked).

        Args:
            unit (GSDDClassUnit): The class (latents ``z`` (K, 3, h, w), paired reals ``x_pair`` (K, 3, H, W)).
            real (Tensor): (B, 3, H, W) real crops of the class.
            params (dict): The step's DSA draw (applied to real and paired images too: siamese).
            accumulate (bool): Back-propagate into ``unit.z.grad``. Default: True.
            where (str | None): The class and iteration, for errors. Default: the class.

        Returns:
            dict[str, float]: l_dis, r, l_total.

        Raises:
            FloatingPointError: A non-finite objective (before the backward) or latent gradient.
        """
        chunk, lam = self.cfg['chunk_size'], float(self.cfg['lam'])
        feat_real = embed_in_chunks(lambda x: self._embed(x, params), real.to(self.device), chunk)
        feat_pair = embed_in_chunks(lambda x: self._embed(x, params), unit.x_pair, chunk)

        def render_embed(z):
            return self._embed(self.amp.forward(self.generate, z), params)  # G under distill.amp, float32 out

        feat_syn = embed_in_chunks(render_embed, unit.z, chunk)

        def objective(fs):
            l_dis, r = dm_distance(feat_real, fs), paired_distance(feat_pair, fs)
            return {'l_dis': l_dis, 'r': r, 'l_total': gsdd_objective(l_dis, r, lam)}

        losses, feat_grad = objective_and_feature_grad(objective, feat_syn)
        where = where or f'GSDD class {unit.index + 1} of {self.source.num_classes} ({unit.name})'
        self.check_finite(losses, where)  # before the chunked backward: z keeps its last finite values
        if accumulate:
            backprop_in_chunks(render_embed, unit.z, self.amp.scale(feat_grad), chunk)  # fp16: scaled
            if self.amp.unscale([unit.optimizer]):  # fp16 overflow: the scaler skips the step
                self.check_finite(losses, where, [unit.z])
        return losses

    # ------------------------------------------------------------------------------------------ units
    def pair_crop(self, path, generator):
        """The real crop x_k a latent is inverted from and paired with (R, Eq. 8): (3, gt_size, gt_size) float32 RGB in
        [0, 1].

        With ``distill.pair_crop_candidates`` M = 1, one uniform crop (the paper's); with M > 1, the lowest-PSNR_bic of
        M
        uniform crops (ties: first), a departure (docs/Methods_GSDD.md).

        Raises:
            KeyError: ``path`` is not an image of the dataset.
        """
        crops = [self.source.random_crop(path, generator) for _ in range(int(self.cfg['pair_crop_candidates']))]
        if len(crops) == 1:
            return crops[0]
        scores = psnr_bic_batch(torch.stack(crops).permute(0, 2, 3, 1).numpy(), self.scale)
        return crops[int(np.argmin(scores))]

    def _start_unit(self, index, resumed=None):
        """Start class ``index`` outside the train loop (tests, profilers): ``self.unit`` is the fresh class."""
        self.unit = self.start_unit(index, resumed)

    def start_unit(self, index, resumed):
        """Start class ``index``: IPC seeded real crops and their inverted latents, or the saved state when
        ``resumed``."""
        cfg = self.cfg
        unit = GSDDClassUnit(
            index=index, name=self.source.class_names[index], t0=time.time(), generator=self.unit_generator(index))
        paths = self.source.images_of(index)
        ipc = int(cfg['ipc'])
        order = torch.randperm(len(paths), generator=unit.generator).tolist()
        unit.pair_paths = [paths[order[k % len(order)]] for k in range(ipc)]  # with repetition if IPC > images
        unit.x_pair = torch.stack([self.pair_crop(p, unit.generator) for p in unit.pair_paths]).to(self.device)
        z0 = resumed['z'].to(self.device) if resumed is not None else self.invert(
            unit.x_pair, where=f'GSDD class {index + 1} of {self.source.num_classes} ({unit.name})')
        unit.z = torch.nn.Parameter(z0)
        optim_cfg = dict(cfg['optim'])
        unit.optimizer = getattr(torch.optim, optim_cfg.pop('type'))([unit.z], **optim_cfg)
        if resumed is not None:
            unit.optimizer.load_state_dict(resumed['optimizer'])
            unit.generator.set_state(resumed['generator'])
        self.optimizers = [unit.optimizer]
        self.logger.info(f'GSDD class {index + 1} of {self.source.num_classes} ({unit.name}): {len(paths)} real '
                         f'images -> IPC {ipc}; latents {tuple(unit.z.shape[1:])}' +
                         (' (resumed)' if resumed is not None else f', inverted in {time.time() - unit.t0:.1f} s'))
        return unit

    def step_unit(self, unit, step, current_iter):
        """One Adam step on ``unit.z`` for L = (1 - lambda) L_dis + lambda R (Eq. 7-9), then z clamped if
        ``clamp_latents``.

        Returns:
            bool: False (a class always runs its T steps).

        Raises:
            FloatingPointError: A non-finite loss or gradient (before the Adam step).
        """
        cfg = self.cfg
        self._draw_extractor(unit.generator)
        real = self.source.sample_class_batch(unit.index, int(cfg['batch_real']), unit.generator)
        params = sample_dsa_params(self.dsa_cfg, real.shape[2], real.shape[3], unit.generator)
        unit.optimizer.zero_grad(set_to_none=True)
        where = (f'GSDD class {unit.index + 1} of {self.source.num_classes} ({unit.name}), iteration {current_iter} '
                 f'(step {step} of {self.T})')
        self.log_dict = self.gsdd_step_losses(unit, real, params, where=where)
        self.amp.step(unit.optimizer)
        self.amp.update()
        if cfg['clamp_latents']:
            with torch.no_grad():
                unit.z.clamp_(0, 1)
        return False

    @torch.no_grad()
    def finish_unit(self, unit):
        """The class's pairs: HR = clamp(G(z), 0, 1) (in chunks), LR = its bicubic x 1/scale."""
        pairs = []
        for i in range(0, unit.z.shape[0], self.cfg['chunk_size']):
            hr = self.generate(unit.z[i:i + self.cfg['chunk_size']]).clamp(0, 1)
            for j, img in enumerate(hr, start=i):
                gt = img.permute(1, 2, 0).float().cpu().numpy()
                pairs.append({
                    'name': f'{unit.name}_gsdd{j:04d}',
                    'lq': bicubic_lr(gt, self.scale),
                    'gt': gt,
                    'info': {
                        'class': unit.name,
                        'class_index': unit.index,
                        'paired_image': unit.pair_paths[j],
                        'init': 'gan_inversion'
                    },
                })
        return pairs

    def get_current_learning_rate(self):
        return [self.cfg['optim']['lr']]

    def unit_state(self):
        unit = self.unit
        if unit is None:
            return None
        return {
            'unit_index': unit.index,
            'z': unit.z.detach().cpu(),
            'optimizer': unit.optimizer.state_dict(),
            'generator': unit.generator.get_state()
        }

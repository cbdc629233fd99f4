"""Dataset distillation for SR without class labels and pre-trained SR networks (Minimax-SR) as a BasicSR model.

Three persisted stages, each a unit of BasicSR's loop (a rerun skips finished stages):

1. iteration 1: PSNR_bic patch selection of ``datasets.train`` at the top-level ``scale``, image features and
   seeded k-means pseudo-labels (data/patch_selection.py): ``<work_dir>/stage1_selection.json`` and the uint8 patch
   store ``<work_dir>/stage1_patches.npy``;
2. iterations 2 .. 1 + F: DiT fine-tuning with DiffFit as Minimax Diffusion's ``train_dit.py`` (per step: a seeded
   batch of the store, random flips, a fresh VAE posterior sample); L_simple + lambda_r L_r + lambda_d L_d +
   lambda_sr L_SR (Eq. 2-6, losses/minimax_loss.py), per-class FIFO memories, AdamW, EMA:
   ``<work_dir>/stage2_difffit.pth``;
3. iterations 2 + F .. 1 + F + k: one pseudo-class per iteration, sampled with the EMA weights, a non-clipping
   diffusers scheduler (:func:`build_sampler`) and classifier-free guidance; HR written with its bicubic x1/scale LR.

Every random draw comes from the stages' seeded generators, never the global RNG. Pseudo-class c is DiT label
``label_offset + c``. Several processes: docs/MultiProcess.md; departures from the paper: docs/Methods_Minimax.md.
"""
import os
import os.path as osp
import time
import torch
from mmengine import dist as mmdist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from basicsr.utils.registry import MODEL_REGISTRY
from basicsr_distill.archs.dit_difffit_arch import (TINY_DIT_CONFIG, TINY_VAE_CONFIG, apply_difffit, build_dit,
                                                    build_vae, drop_labels, null_label, pseudo_to_dit_labels,
                                                    set_label_dropout, vae_decode, vae_downsample_factor)
from basicsr_distill.data.patch_selection import (PatchStore, ensure_patch_store, load_selection, run_stage1,
                                                  stage1_options)
from basicsr_distill.data.sr_patches import bicubic_lr
from basicsr_distill.distilled_set import options_hash
from basicsr_distill.losses.minimax_loss import (FIFOMemory, diversity_loss, minimax_objective, predict_x0_from_eps,
                                                 representativeness_loss, sr_loss)
from basicsr_distill.models.distill_base_model import DistillBaseModel
from basicsr_distill.models.minimax_parts import (SAMPLERS, MinimaxClassUnit, MinimaxStage2State, build_sampler,
                                                  build_train_scheduler, stage1_section)
from basicsr_distill.utils.amp import MixedPrecision
from basicsr_distill.utils.checkpoint import read_checkpoint
from basicsr_distill.utils.ema import EMA
from basicsr_distill.utils.file_io import torch_save_atomic
from basicsr_distill.utils.image_io import list_images, verify_image
from basicsr_distill.utils.options import check_optimizer, check_ranges, merge_options

#: Defaults of the ``distill`` section (paper / Minimax Diffusion: lambdas 0.002 / 0.008 / 1, AdamW lr 1e-3,
#: EMA 0.9999, memories of 64, random horizontal flips, guidance 4.0 with 50 steps). ``finetune.sr_timesteps``
#: [lo, hi): the timesteps t (lo <= t < hi) at which L_SR is applied; the default [0, 250) keeps it where the
#: x0-prediction is informative (linear schedule of 1000 steps: a_249 = 0.52, so z_hat carries the noise error
#: times sqrt(1 / a_t - 1) <= 0.96); [0, num_train_timesteps] is the paper's every timestep.
MINIMAX_DEFAULTS = {
    'work_dir': None,  # stage results; default: <distilled_root>_work
    'stage1': {},  # data/patch_selection.py: threshold, extractor, k, seed, ... (the data: datasets.train)
    'dit': {
        'pretrained': None,
        'config': None,
        'subfolder': 'auto'
    },  # a local diffusers dir, or config: tiny
    'vae': {
        'pretrained': None,
        'config': None,
        'subfolder': 'auto'
    },
    'label_offset': 0,
    'amp': 'off',  # the DiT / VAE passes under autocast: 'off', 'bf16' or 'fp16' (CUDA; grad scaler), utils/amp.py
    'finetune': {
        'iters': 1000,
        'batch_size': 8,
        'lr': 1e-3,
        'weight_decay': 0.0,
        'ema_decay': 0.9999,
        'memory_size': 64,
        'lambda_r': 0.002,
        'lambda_d': 0.008,
        'lambda_sr': 1.0,
        'label_dropout': 0.1,
        'num_train_timesteps': 1000,
        'beta_schedule': 'linear',
        'sr_timesteps': [0, 250],
        'hflip': True
    },
    'sample': {
        'images_per_class': 10,
        'steps': 50,
        'guidance_scale': 4.0,
        'scheduler': 'DDIMScheduler',
        'seed': 0
    },
}

#: Ranges of the stage-2 values of ``distill.finetune`` (``utils.options.check_ranges``; the counts are checked in
#: ``_check_options``), checked when the model is built.
MINIMAX_FINETUNE_RANGES = {
    'lr': '>= 0',
    'weight_decay': '>= 0',
    'ema_decay': '[0, 1]',
    'lambda_r': '>= 0',
    'lambda_d': '>= 0',
    'lambda_sr': '>= 0',
    'label_dropout': '[0, 1]',
}


def _build(section, builder, tiny, option, seed):
    """A model from a local diffusers folder, or randomly initialised from a config (seeded, global RNG restored)."""
    config = dict(tiny) if section.get('config') == 'tiny' else section.get('config')
    if isinstance(config, dict):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return builder(dict(config))
    if not section.get('pretrained'):
        raise ValueError(f'{option}: give pretrained (a local diffusers folder) or config (tiny, or a dict)')
    return builder(
        section['pretrained'], subfolder=section.get('subfolder', 'auto'), option_name=f'{option}.pretrained')


@MODEL_REGISTRY.register()
class MinimaxDiffusionModel(DistillBaseModel):
    """Minimax-SR: label-free diffusion distillation in three persisted stages (see the module docstring).

    Options: ``datasets.train`` of type ``DistillStageDataset`` with the stage-1 data (``MINIMAX_DATA_KEYS``), the
    ``distill`` section (:data:`MINIMAX_DEFAULTS`), ``path.distilled_root`` and
    ``train.total_iter >= 1 + finetune.iters + stage1.k``.

    Raises:
        ValueError: Unknown or invalid options (named), a too small ``train.total_iter``, a stage-1 file that is not an
            image or a truncated PNG (before the DiT and VAE are built), with several processes a
            ``finetune.batch_size`` that is not a multiple of their number.
        FileNotFoundError: Missing local DiT / VAE / CLIP folders or ``datasets.train.dataroot_gt`` (named).
        FloatingPointError: (``optimize_parameters``) a non-finite stage-2 loss or gradient, before the step.
    """

    @classmethod
    def run_output_folders(cls, opt):
        """``path.distilled_root`` and ``distill.work_dir`` (not locked); see
        :meth:`DistillBaseModel.run_output_folders`."""
        work = (opt.get('distill') or {}).get('work_dir')
        return super().run_output_folders(opt) + [
            {
                'key': 'work_dir',
                'folder': osp.abspath(cls.default_work_dir(opt)),
                'what': 'option distill.work_dir' + ('' if work else ', default <distilled_root>_work'),
                'hint': '',
                'lock': False
            }
        ]

    @classmethod
    def default_work_dir(cls, opt):
        """``distill.work_dir``, default ``<distilled_root>_work``."""
        work = (opt.get('distill') or {}).get('work_dir')
        return work or f'{cls.distilled_root(opt).rstrip("/")}_work'

    def __init__(self, opt):
        super().__init__(opt)
        cfg = self.cfg = merge_options(MINIMAX_DEFAULTS, opt.get('distill'))
        self.scale = int(opt['scale'])
        self._check_options()
        self.stage1_opt = stage1_section(opt)  # after _check_options: distill.stage1 is a mapping
        self._check_stage1_images()
        self.k = int(cfg['stage1'].get('k', 7))
        self.F = int(cfg['finetune']['iters'])
        needed = 1 + self.F + self.units_per_rank(self.k)
        if int(opt['train']['total_iter']) < needed:
            classes = f'distill.stage1.k={self.k} classes' if self.world_size == 1 else (
                f'ceil(distill.stage1.k={self.k} classes / {self.world_size} processes)')
            raise ValueError(f'train.total_iter={opt["train"]["total_iter"]} is too small: 1 (stage 1) + '
                             f'distill.finetune.iters={self.F} + {classes} = {needed}')
        self.log_idle_iterations(needed)
        tiny_dit = dict(TINY_DIT_CONFIG, num_embeds_ada_norm=self.k + int(cfg['label_offset']))
        self.amp = MixedPrecision(cfg['amp'], self.device)  # ValueError naming distill.amp (fp16 on a CPU)
        self.dit = _build(cfg['dit'], build_dit, tiny_dit, 'distill.dit', self.seed).to(self.device)
        self.vae = _build(cfg['vae'], build_vae, TINY_VAE_CONFIG, 'distill.vae', self.seed + 1).to(self.device).eval()
        self.vae.requires_grad_(False)
        self.trainable = apply_difffit(self.dit)
        set_label_dropout(self.dit, 0.0)  # labels are dropped once per sample in the loop (DiT's training)
        ft = cfg['finetune']
        self.train_scheduler = build_train_scheduler(ft['num_train_timesteps'], ft['beta_schedule'])
        root = self.distilled_root(opt)
        self.work_dir = self.default_work_dir(opt)
        os.makedirs(self.work_dir, exist_ok=True)
        self.unit_names = [f'pseudo{c}' for c in range(self.k)]  # stage 3 writes one unit per pseudo-class
        self.writer = self.open_writer(
            root,
            method='minimax',
            scale=self.scale,
            source={
                'folder': self.stage1_opt.get('dataroot_gt'),
                'pseudo_classes': self.k,
                'gt_size': self.stage1_opt.get('gt_size')
            },
            size_control={'ipc': int(cfg['sample']['images_per_class'])},
            options=opt)
        self.stage2_path = osp.join(self.work_dir, 'stage2_difffit.pth')
        self.store_path = osp.join(self.work_dir, 'stage1_patches.npy')
        self.store = None
        self._perm = (None, None)  # (epoch, permutation) of the batch order, see batch_indices
        self.stage2_key = options_hash(
            dict({k: cfg[k]
                  for k in ('dit', 'vae', 'label_offset', 'finetune')}, stage1=self.stage1_opt))
        self.selection = None
        self.ft = None  # stage-2 state while it runs
        self.dit_ddp = None  # several processes: the DiT in DistributedDataParallel while stage 2 runs
        self.stage2_done = False
        self.ft_latent_shape = None
        self.logger.info(f'Minimax-SR: stage 1, {self.F} fine-tuning iterations, {self.k} pseudo-classes x '
                         f'{cfg["sample"]["images_per_class"]} images -> {root} (work dir {self.work_dir})')

    def _check_options(self):
        """Counts of the ``distill`` section, checked before any model is built."""
        cfg = self.cfg
        if not isinstance(cfg['stage1'], dict):
            raise ValueError(f'option distill.stage1 must be a mapping of options, got {cfg["stage1"]!r}')
        k = cfg['stage1'].get('k', 7)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f'option distill.stage1.k (pseudo-classes) must be an int >= 1, got {k!r}')
        for name, value, low in (('sample.images_per_class', cfg['sample']['images_per_class'],
                                  1), ('sample.steps', cfg['sample']['steps'],
                                       1), ('finetune.iters', cfg['finetune']['iters'],
                                            1), ('finetune.batch_size', cfg['finetune']['batch_size'],
                                                 1), ('finetune.memory_size', cfg['finetune']['memory_size'], 1),
                                 ('finetune.num_train_timesteps', cfg['finetune']['num_train_timesteps'],
                                  1), ('label_offset', cfg['label_offset'], 0)):
            if value < low:
                raise ValueError(f'option distill.{name} must be >= {low}, got {value}')
        check_ranges(cfg, {f'finetune.{k}': v for k, v in MINIMAX_FINETUNE_RANGES.items()})
        ft = cfg['finetune']
        check_optimizer({'type': 'AdamW', 'lr': ft['lr'], 'weight_decay': ft['weight_decay']}, 'distill.finetune')
        lo_hi = cfg['finetune']['sr_timesteps']
        steps = cfg['finetune']['num_train_timesteps']
        if not (isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2
                and all(isinstance(v, int) and not isinstance(v, bool)
                        for v in lo_hi) and 0 <= lo_hi[0] < lo_hi[1] <= steps):
            raise ValueError(f'option distill.finetune.sr_timesteps must be [lo, hi] with ints 0 <= lo < hi <= '
                             f'distill.finetune.num_train_timesteps={steps} (L_SR at lo <= t < hi), got {lo_hi!r}')
        if cfg['sample']['scheduler'] not in SAMPLERS:
            raise ValueError(f'option distill.sample.scheduler must be one of {list(SAMPLERS)}, got '
                             f'{cfg["sample"]["scheduler"]!r}')
        if cfg['finetune']['batch_size'] % self.world_size:
            raise ValueError(f'option distill.finetune.batch_size={cfg["finetune"]["batch_size"]} must be a multiple '
                             f'of the {self.world_size} processes (each computes an equal slice of the batch)')

    def _check_stage1_images(self):
        """Stage-1 options and image headers checked before the DiT and VAE are built; images below one patch are warned
        of."""
        opts = stage1_options(self.stage1_opt)
        size, scale, small = opts['gt_size'], opts['scale'], []
        paths = list_images(opts['dataroot_gt'], opts['meta_info_file'])
        for path in paths:
            h, w = verify_image(path)
            if min(h - h % scale, w - w % scale) < size:
                small.append(f'{osp.basename(path)} {(h, w)}')
        if len(small) == len(paths):
            raise ValueError(f'datasets.train.dataroot_gt {opts["dataroot_gt"]}: no image is at least {size}x{size} '
                             f'pixels (gt_size), so stage 1 has no patch: {", ".join(small[:10])}. Give larger '
                             'images or a smaller gt_size.')
        if small:
            self.logger.warning(f'Minimax-SR stage 1 will skip {len(small)} image(s) of {opts["dataroot_gt"]} smaller '
                                f'than one {size}x{size} patch: {", ".join(small[:10])}' +
                                (', ...' if len(small) > 10 else ''))

    # ------------------------------------------------------------------------------------------ stage 1
    def stage1(self):
        """Selection, pseudo-labels and patch store, reused when options and images are unchanged (rank 0 computes
        them).

        Returns:
            dict: The selection (``patch_selection.load_selection``); ``self.store`` is its ``PatchStore``.
        """
        if self.selection is None:
            path = osp.join(self.work_dir, 'stage1_selection.json')
            if self.rank == 0:
                self.selection = run_stage1(self.stage1_opt, path)
                self.store = ensure_patch_store(self.selection, self.store_path)
            if self.world_size > 1:
                mmdist.barrier()
            if self.rank != 0:
                self.selection = load_selection(path)
                self.store = PatchStore(self.store_path)
        return self.selection

    # ------------------------------------------------------------------------------------------ stage 2
    def _load_stage2(self):
        if self.stage2_done:
            return True
        if not osp.isfile(self.stage2_path):
            return False
        state = read_checkpoint(self.stage2_path, 'Minimax-SR stage 2 weights (distill.work_dir)')
        if state.get('key') != self.stage2_key:
            raise ValueError(f'{self.stage2_path} was fine-tuned with other options; move it away or pick another '
                             f'distill.work_dir')
        self._set_trainable(state['ema'])  # sampling uses the EMA weights
        self.stage2_done = True
        return True

    def _set_trainable(self, tensors):
        params = dict(self.dit.named_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value.to(params[name].device))

    def batch_indices(self, step):
        """(B,) int64 CPU patch indices in [0, N) of fine-tuning step ``step`` (1-based), B = ``finetune.batch_size``.

        Positions ``(step - 1) B .. step B - 1`` of the concatenated epochs; epoch e is a permutation drawn from
        ``unit_generator(1, salt=1 + e)``, so the order depends on the step alone.
        """
        n, size = len(self.ft.labels), int(self.cfg['finetune']['batch_size'])
        pos = torch.arange((step - 1) * size, step * size)
        out = torch.empty(size, dtype=torch.long)
        for epoch in (pos // n).unique().tolist():
            if self._perm[0] != epoch:
                self._perm = (epoch, torch.randperm(n, generator=self.unit_generator(1, salt=1 + epoch)))
            here = pos // n == epoch
            out[here] = self._perm[1][pos[here] % n]
        return out

    @torch.no_grad()
    def encode_real(self, indices, flips, posterior_noise):
        """Scaled VAE posterior samples of stored patches: ``vae.encode(2 x - 1).latent_dist.sample() * 0.18215`` with
        the
        given noise.

        Args:
            indices (Tensor): (b,) patch indices.
            flips (Tensor): (b,) bool, flip left-right.
            posterior_noise (Tensor): (b, C, h, w) standard normal noise (CPU).

        Returns:
            Tensor: (b, C, h, w) latents on the model's device.
        """
        patches = torch.from_numpy(self.store.read(indices)).to(self.device)
        img = patches.permute(0, 3, 1, 2).float() / 255.
        img = torch.where(flips.to(self.device).view(-1, 1, 1, 1), img.flip(-1), img)
        with self.amp.autocast():
            dist = self.vae.encode(img * 2 - 1).latent_dist
        z = dist.mean.float() + dist.std.float() * posterior_noise.to(device=self.device, dtype=torch.float32)
        return z * self.vae.config.scaling_factor

    def _start_stage2(self, resumed=None):
        ft = self.cfg['finetune']
        sel = self.stage1()
        labels = torch.as_tensor(sel['labels'], dtype=torch.long)
        side = self.store.shape[1] // vae_downsample_factor(self.vae)
        self.ft_latent_shape = torch.Size([self.vae.config.latent_channels, side, side])
        params = [p for n, p in self.dit.named_parameters() if n in set(self.trainable)]
        st = MinimaxStage2State(
            store=self.store,
            labels=labels,
            generator=self.unit_generator(1),
            optimizer=torch.optim.AdamW(params, lr=ft['lr'], weight_decay=ft['weight_decay']),
            ema=EMA(self.dit, decay=ft['ema_decay']),
            real_mem=FIFOMemory(self.k, ft['memory_size']),
            syn_mem=FIFOMemory(self.k, ft['memory_size']),
            t0=time.time())
        if resumed is not None:
            self._set_trainable(resumed['trainable'])
            st.optimizer.load_state_dict(resumed['optimizer'])
            st.ema.load_state_dict(resumed['ema'])
            st.real_mem.load_state_dict(resumed['real_mem'])
            st.syn_mem.load_state_dict(resumed['syn_mem'])
            st.generator.set_state(resumed['generator'])
        if self.world_size > 1:  # after the resumed values: DDP broadcasts rank 0's (equal) weights
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            self.dit_ddp = DistributedDataParallel(self.dit, device_ids=device_ids, broadcast_buffers=False)
        self.ft = st
        self.optimizers = [st.optimizer]
        self.logger.info(f'Minimax-SR stage 2: fine-tuning on {len(st.labels)} selected patches (random flips: '
                         f'{ft["hflip"]}, a fresh posterior sample per step), {len(self.trainable)} DiffFit tensors '
                         'trainable' + (' (resumed)' if resumed is not None else ''))

    def finetune_losses(self, z0, labels, generator):
        """One fine-tuning step's losses (Eq. 2-6) for latents z0 (B, C, h, w) of pseudo-classes ``labels`` (B,).

        t ~ U{0, T - 1}, eps and the label dropout are drawn from ``generator`` in that order. L_simple (Eq. 2) is on
        the
        DiT's first C output channels; L_r / L_d (Eq. 3-4) use ``predict_x0_from_eps`` against the memories before this
        step; ``L_SR = -(1 / B) sum_{i: lo <= t_i < hi} E(clamp(D(z_hat_i), 0, 1))`` (Eq. 5, [lo, hi) =
        ``finetune.sr_timesteps``, 0 when no sample is in range or ``lambda_sr`` is 0). With W processes each runs its
        slice
        of B / W and the summed gradient equals the single-process one up to float order (docs/MultiProcess.md).

        Returns:
            tuple[dict[str, Tensor], Tensor, Tensor]: the whole batch's losses (l_simple, l_r, l_d, l_sr, l_total),
            pred_x0 (B, C, h, w, detached) and this process's objective to back-propagate.
        """
        ft, st = self.cfg['finetune'], self.ft
        t_cpu = torch.randint(0, ft['num_train_timesteps'], (z0.shape[0], ), generator=generator)
        t = t_cpu.to(self.device)
        noise = torch.randn(z0.shape, generator=generator).to(self.device)
        z_t = self.train_scheduler.add_noise(z0, noise, t)
        dit_labels = pseudo_to_dit_labels(labels, self.cfg['label_offset'])
        dit_labels = drop_labels(dit_labels.cpu(), null_label(self.dit), ft['label_dropout'], generator)
        per = z0.shape[0] // self.world_size
        part = slice(self.rank * per, (self.rank + 1) * per)
        dit = self.dit if self.dit_ddp is None else self.dit_ddp
        out = self.amp.forward(dit, z_t[part], timestep=t[part], class_labels=dit_labels[part].to(self.device)).sample
        eps = out[:, :z0.shape[1]]  # learned-sigma DiTs return 2C channels: the first C are epsilon
        l_simple = F.mse_loss(eps, noise[part])
        own_x0 = predict_x0_from_eps(z_t[part], eps, self.train_scheduler.alphas_cumprod, t[part])
        pred_x0 = own_x0
        if self.world_size > 1:
            parts = mmdist.all_gather(own_x0.detach())
            parts[self.rank] = own_x0
            pred_x0 = torch.cat(parts)
        l_r = representativeness_loss(pred_x0, labels, st.real_mem)
        l_d = diversity_loss(pred_x0, labels, st.syn_mem)
        lo, hi = ft['sr_timesteps']
        chosen = ((t_cpu[part] >= lo) & (t_cpu[part] < hi)).nonzero().flatten()
        if ft['lambda_sr'] > 0 and len(chosen):
            decoded = self.amp.forward(vae_decode, self.vae, own_x0[chosen.to(self.device)])  # gradient path, Eq. 5
            l_sr = sr_loss(decoded, self.scale) * (len(chosen) / per)
        else:
            l_sr = l_simple.new_zeros(())
        lams = ft['lambda_r'], ft['lambda_d'], ft['lambda_sr']
        total = minimax_objective(l_simple, l_r, l_d, l_sr, *lams)
        losses = {'l_simple': l_simple, 'l_r': l_r, 'l_d': l_d, 'l_sr': l_sr, 'l_total': total}
        if self.world_size == 1:
            return losses, pred_x0.detach(), total
        means = torch.stack([l_simple, l_sr]).detach()
        mmdist.all_reduce(means, op='mean')
        objective = minimax_objective(l_simple, self.world_size * l_r, self.world_size * l_d, l_sr, *lams)
        losses.update(l_simple=means[0], l_sr=means[1], l_r=l_r.detach(), l_d=l_d.detach())
        losses['l_total'] = minimax_objective(means[0], losses['l_r'], losses['l_d'], means[1], *lams)
        return losses, pred_x0.detach(), objective

    def real_batch(self, step):
        """Step ``step``'s real batch: flips (p = 1/2 with ``finetune.hflip``) and posterior noise drawn from the stage
        generator, indices from :meth:`batch_indices`; each process encodes its slice, then the latents are gathered.

        Returns:
            tuple[Tensor, Tensor]: z0 (B, C, h, w) latents and labels (B,), on the model's device.
        """
        ft, st = self.cfg['finetune'], self.ft
        size = int(ft['batch_size'])
        idx = self.batch_indices(step)
        if ft['hflip']:
            flips = torch.rand(size, generator=st.generator) < 0.5
        else:
            flips = torch.zeros(size, dtype=torch.bool)
        noise = torch.randn((size, ) + tuple(self.ft_latent_shape), generator=st.generator)
        per = size // self.world_size
        part = slice(self.rank * per, (self.rank + 1) * per)
        z0 = self.encode_real(idx[part], flips[part], noise[part])
        if self.world_size > 1:
            z0 = torch.cat(mmdist.all_gather(z0))
        return z0, st.labels[idx].to(self.device)

    def _finetune_step(self, step):
        st = self.ft
        z0, labels = self.real_batch(step)
        self.dit.train()
        st.optimizer.zero_grad(set_to_none=True)
        losses, pred_x0, objective = self.finetune_losses(z0, labels, st.generator)
        where = f'Minimax-SR stage 2 (fine-tuning), iteration {step + 1} (step {step} of {self.F})'
        self.check_finite(losses, where)  # before backward / step: the DiffFit tensors and EMA keep their values
        self.amp.scale(objective).backward()  # distill.amp fp16: scaled, unscaled below
        if self.amp.unscale([st.optimizer]):  # fp16 overflow: the scaler skips the step
            self.check_finite(losses, where, st.optimizer.param_groups[0]['params'])
        self.amp.step(st.optimizer)
        self.amp.update()
        st.ema.update()
        st.real_mem.push(labels, z0.flatten(1))  # after the loss, as the reference
        st.syn_mem.push(labels, pred_x0.flatten(1))
        self.log_dict = {k: float(v.detach()) for k, v in losses.items()}
        if step == self.F:
            trainable = {n: p.detach().cpu() for n, p in self.dit.named_parameters() if n in set(self.trainable)}
            st.ema.copy_to(self.dit)  # sampling (stage 3) uses the EMA weights
            ema = {n: p.detach().cpu() for n, p in self.dit.named_parameters() if n in set(self.trainable)}
            if self.rank == 0:  # every rank holds the same tensors
                torch_save_atomic(
                    self.stage2_path, {
                        'key': self.stage2_key,
                        'trainable': trainable,
                        'ema': ema,
                        'iters': self.F
                    },
                    tmp=f'{self.stage2_path}.tmp')
            self.logger.info(f'Minimax-SR stage 2 done in {time.time() - st.t0:.1f} s: {self.stage2_path}')
            self.ft, self.optimizers, self.stage2_done, self.dit_ddp = None, [], True, None

    # ------------------------------------------------------------------------------------------ stage 3
    @torch.no_grad()
    def sample_class(self, c):
        """Images of pseudo-class c with classifier-free guidance from the EMA-weighted DiT.

        Image j starts from z_T ~ N(0, I) of its own generator (seed ``sample.seed * 1000003 + c * 10007 + j``); each
        step takes ``eps = eps_u + guidance_scale (eps_c - eps_u)``; the last latent is decoded and clamped.

        Returns:
            tuple[Tensor, list[int]]: (n, 3, H, W) images in [0, 1] and the seed of each.
        """
        smp = self.cfg['sample']
        scheduler = build_sampler(smp['scheduler'], self.train_scheduler.config)
        self.dit.eval()
        size = self.dit.config.sample_size
        channels = self.dit.config.in_channels
        label = pseudo_to_dit_labels(torch.tensor([c]), self.cfg['label_offset']).to(self.device)
        labels = torch.cat([label, torch.full_like(label, null_label(self.dit))])
        images, seeds = [], []
        for j in range(int(smp['images_per_class'])):
            seed = int(smp['seed']) * 1000003 + c * 10007 + j
            gen = torch.Generator().manual_seed(seed)
            z = torch.randn(1, channels, size, size, generator=gen).to(self.device) * scheduler.init_noise_sigma
            scheduler.set_timesteps(int(smp['steps']))
            for t in scheduler.timesteps:
                z_in = scheduler.scale_model_input(torch.cat([z, z]), t)
                out = self.amp.forward(
                    self.dit, z_in, timestep=t.expand(2).to(self.device), class_labels=labels).sample[:, :channels]
                eps_c, eps_u = out.chunk(2)
                eps = eps_u + smp['guidance_scale'] * (eps_c - eps_u)
                z = scheduler.step(eps, t, z, generator=gen).prev_sample
            images.append(self.amp.forward(vae_decode, self.vae, z).clamp(0, 1))
            seeds.append(seed)
        return torch.cat(images), seeds

    def locate_unit(self, current_iter):
        """Stage 3: iteration ``2 + F + j`` of rank k samples pseudo-class ``j * W + k`` (one step per unit)."""
        return (current_iter - 2 - self.F) * self.world_size + self.rank, 1

    def start_unit(self, index, resumed):
        """Stage-3 unit ``index`` (a pseudo-class).

        Raises:
            RuntimeError: ``stage2_difffit.pth`` is missing.
        """
        if not self._load_stage2():
            raise RuntimeError(f'stage 3 needs the fine-tuned DiT {self.stage2_path}; it is missing')
        return MinimaxClassUnit(index=index, name=self.unit_names[index], t0=time.time())

    def step_unit(self, unit, step, current_iter):
        """Nothing to optimise in stage 3: the class is sampled by :meth:`finish_unit`."""
        return False

    def finish_unit(self, unit):
        """The pseudo-class's pairs: sampled HR images and their bicubic x 1/scale LR, with label and seed."""
        c, name = unit.index, unit.name
        images, seeds = self.sample_class(c)
        pairs = []
        for j, (img, seed) in enumerate(zip(images, seeds)):
            gt = img.permute(1, 2, 0).float().cpu().numpy()
            pairs.append({
                'name': f'{name}_minimax{j:04d}',
                'lq': bicubic_lr(gt, self.scale),
                'gt': gt,
                'info': {
                    'label': c,
                    'dit_label': int(c + self.cfg['label_offset']),
                    'seed': seed,
                    'sampler': self.cfg['sample']['scheduler'],
                    'steps': int(self.cfg['sample']['steps']),
                    'guidance_scale': float(self.cfg['sample']['guidance_scale'])
                }
            })
        return pairs

    # ------------------------------------------------------------------------------------------ loop
    def optimize_parameters(self, current_iter):
        """Iteration 1: stage 1; 2 .. 1 + finetune.iters: one stage-2 step; then one stage-3 pseudo-class per iteration.

        Raises:
            FloatingPointError: A non-finite stage-2 loss or gradient (before the optimiser step).
        """
        if current_iter == 1:
            self.stage1()
            return
        step = current_iter - 1
        if step <= self.F:
            if self._load_stage2():
                return
            if self.ft is None:
                self.stage1()
                resumed = self.take_pending_state(1)
                self._start_stage2(resumed)
            self._finetune_step(step)
            return
        super().optimize_parameters(current_iter)  # stage 3: the shared step sequence, one pseudo-class per unit

    def get_current_learning_rate(self):
        return [self.cfg['finetune']['lr']]

    def unit_state(self):
        st = self.ft
        if st is None:
            return None
        return {
            'unit_index': 1,
            'trainable': {
                n: p.detach().cpu()
                for n, p in self.dit.named_parameters() if n in set(self.trainable)
            },
            'optimizer': st.optimizer.state_dict(),
            'ema': st.ema.state_dict(),
            'real_mem': st.real_mem.state_dict(),
            'syn_mem': st.syn_mem.state_dict(),
            'generator': st.generator.get_state()
        }

"""Instance Data Condensation (IDC, Peng et al.): Algorithm 1 as a BasicSR model.

Data flow of one instance (one training image), iterations ``i * T + 1 .. (i + 1) * T`` of BasicSR's loop:

1. start: real LR patches x (N, 3, h, w) of image i (SRInstanceDataset); n = max(1, round(r N)) learnable
   patches x_hat (from real patches or noise); teacher features f(x) once, eval mode, no_grad; RLFF (channel subset
   drawn from the instance's seeded generator, BN statistics of f(x)); local real features f''(x); K-means groups.
2. every step: f''(x_hat) -> L = w_ins L_ins (warm-up), then + w_group L_group + w_pair L_pair while synthetic
   local patches are assigned progressively to groups under quotas; Adam step on x_hat; clamp to [0, 1].
3. end: x_hat^HR = teacher(x_hat) (or network_up), pairs written through the distilled-set writer.

Equations: NCFD in losses/ncfd_loss.py (Eq. 2-3, 6), RLFF in ops/rlff.py (Eq. 4-5), L_group / L_pair in
losses/idc_loss.py (Eq. 7-8), grouping in ops/grouping.py.
"""
import math
import numpy as np
import time
import torch
from dataclasses import dataclass
from typing import Any

from basicsr.data import build_dataset
from basicsr.utils.registry import MODEL_REGISTRY
from basicsr_distill.distilled_set import check_source_name
from basicsr_distill.losses.idc_loss import RealCharacteristicBank, multi_level_ncfd, pair_loss
from basicsr_distill.models.distill_base_model import DistillBaseModel
from basicsr_distill.ops.grouping import (assign_progressive, assignment_target, group_quotas, kmeans_groups,
                                          nearest_real_in_group, patch_descriptors)
from basicsr_distill.ops.lowpass import lowpass_update
from basicsr_distill.ops.psnr_bic import psnr_bic_batch, select_lowest_psnr_bic
from basicsr_distill.ops.rlff import RandomLocalFourierFeatures
from basicsr_distill.utils.amp import MixedPrecision
from basicsr_distill.utils.feature_tap import FeatureTap
from basicsr_distill.utils.options import check_optimizer, check_ranges, merge_options

#: Defaults of the ``distill`` section; the paper gives r = 0.1 and 20k iterations per image, the rest is ours.
IDC_DEFAULTS = {
    'ratio': 0.1,  # r: synthetic / real patches of an instance
    'init': 'real',  # 'real' (random real patches), 'psnr_bic' / 'psnr_bic_lowest' (informative real ones), 'noise'
    'feature_layer': None,  # teacher layer name; None uses the teacher's forward_features()
    'iters_per_instance': 20000,  # T
    'warmup_iters': 2000,  # L_ins only for these steps
    'assign_iters': 4000,  # progressive assignment runs over these steps after the warm-up
    'assign_steps': 10,  # number of assignment rounds (linear in count)
    'num_groups': 8,  # M (K-means groups)
    'real_batch_size': 32,  # patches per no_grad teacher forward on the real side
    'rlff': {
        'kernel_size': 3,
        'num_channels': 64,
        'patch_size': 8
    },  # k, C_out, p
    'ncfd': {
        'num_freqs': 4096,
        'alpha': 0.5,
        'bank_size': 16384
    },  # F per step, alpha, B (losses/idc_loss.py)
    'weights': {
        'ins': 1.0,
        'group': 1.0,
        'pair': 0.1
    },  # w_ins, w_group, w_pair
    'optim': {
        'type': 'Adam',
        'lr': 0.01,
        'betas': [0.9, 0.999]
    },
    'lr_schedule': 'constant',  # or 'cosine' (per instance, to 0)
    'instances_per_step': 1,  # K: instances optimised together, one teacher pass over their x_hat per step
    'redraw_every': 0,  # steps between re-draws of the RLFF channel subset and the NCFD bank (0: fixed per instance)
    'pair_rematch': 'assignment',  # L_pair partners: 'assignment' (when assigned), 'round' (every round), 'step'
    'pair_exclude_source': False,  # never pair a synthetic local patch with its own source real patch (init: real)
    'update_lowpass': 0,  # s: each step's change of x_hat averaged over s x s LR cells, bilinear back (0: off)
    'real_side': 'all',  # real patches x_hat is matched to: 'all' of the image's, 'psnr_bic' its lower half by PSNR_bic
    'amp': 'off',  # the teacher's passes under autocast: 'off', 'bf16' or 'fp16' (CUDA; grad scaler), utils/amp.py
}
#: Ranges of the counts and weights of :data:`IDC_DEFAULTS` (``utils.options.check_ranges``), checked when the model
#: is built.
IDC_RANGES = {
    'iters_per_instance': '>= 1',
    'warmup_iters': '>= 0',
    'assign_iters': '>= 0',
    'assign_steps': '>= 1',
    'num_groups': '>= 1',
    'real_batch_size': '>= 1',
    'rlff.kernel_size': '>= 1',
    'rlff.num_channels': '>= 1',
    'rlff.patch_size': '>= 1',
    'ncfd.num_freqs': '>= 1',
    'ncfd.alpha': '[0, 1]',
    'ncfd.bank_size': '>= 1',
    'weights.ins': '>= 0',
    'weights.group': '>= 0',
    'weights.pair': '>= 0',
    'instances_per_step': '>= 1',
    'redraw_every': '>= 0',
    'update_lowpass': '>= 0',
}
REAL_SIDES = ('all', 'psnr_bic')
PAIR_REMATCH = ('assignment', 'round', 'step')
INIT_MODES = ('real', 'psnr_bic', 'psnr_bic_lowest', 'noise')


def initial_x_hat(lq, ratio, init, generator, gt=None, scale=4):
    """The initial synthetic LR patches of an instance: the first draws of its fresh seeded generator.

    Args:
        lq (Tensor): (N, 3, h, w) real LR patches of the image, in [0, 1], N >= 1.
        ratio (float): r; n = max(1, round(r N)).
        init (str): One of :data:`INIT_MODES`: ``'real'``: n distinct real patches drawn uniformly (the paper's);
            ``'psnr_bic'``: n drawn among the ceil(N / 2) lowest-PSNR_bic patches (Minimax-SR's Eq. 1 per image);
            ``'psnr_bic_lowest'``: the n lowest (ties: lowest index); ``'noise'``: uniform [0, 1]. The PSNR_bic modes
            depart from the paper: they start from texture and edges, which matter most when one patch stands for an
            image.
        generator (torch.Generator): The instance's CPU generator.
        gt (Tensor | None): (N, 3, h * scale, w * scale) HR patches in [0, 1], for the PSNR_bic modes.
        scale (int): SR scale of the PSNR_bic round trip. Default: 4.

    Returns:
        tuple: ``(init_ids, x0)``: (n,) long indices into ``lq`` (-1 for noise) and (n, 3, h, w) float patches on
        ``lq``'s device.

    Raises:
        ValueError: An unknown ``init``, or a PSNR_bic mode without ``gt`` of N patches.
    """
    n = max(1, round(ratio * lq.shape[0]))
    if init == 'real':
        ids = torch.randperm(lq.shape[0], generator=generator)[:n]
    elif init in ('psnr_bic', 'psnr_bic_lowest'):
        if gt is None or gt.shape[0] != lq.shape[0]:
            raise ValueError(f'distill.init {init!r} needs the HR patches of the instance (gt), one per LR patch')
        scores = psnr_bic_batch(gt.permute(0, 2, 3, 1).double().cpu().numpy(), scale=scale)
        if init == 'psnr_bic_lowest':
            ids = torch.tensor(select_lowest_psnr_bic(scores, n), dtype=torch.long)  # the selection baseline's rule
        else:
            lower = psnr_bic_lower_half(scores, n)
            ids = lower[torch.randperm(lower.shape[0], generator=generator)[:n]]
    elif init == 'noise':
        ids = torch.full((n, ), -1, dtype=torch.long)
        return ids, torch.rand(n, *lq.shape[1:], generator=generator, dtype=lq.dtype).to(lq.device)
    else:
        raise ValueError(f'distill.init must be one of {list(INIT_MODES)}, got {init!r}')
    return ids, lq[ids.to(lq.device)].clone()


def psnr_bic_lower_half(scores, n=1):
    """Long indices of the max(n, ceil(N / 2)) patches of lowest PSNR_bic (``scores`` (N,) in dB), lowest first
    (stable)."""
    return torch.from_numpy(np.argsort(scores, kind='stable')[:max(n, -(-len(scores) // 2))].copy())


@dataclass
class IDCInstance:
    """The instance (training image) being condensed; dropped once written. Tensors are on the model's device except
    ``generator`` (CPU) and ``init_ids``.

    Attributes:
        index (int), name (str), path (str): The unit (0-based), its name (image stem) and image path.
        t0 (float): Start time (s).
        num_real (int): N, real LR patches (0: the image is too small, no pair is written).
        generator (torch.Generator): The seeded generator (RLFF channels, NCFD frequencies, init).
        n_syn (int): n = max(1, round(r N)).
        init_ids (Tensor): (n,) indices of the real patches x_hat started from (-1 for noise).
        coords (list): HR (y, x) of every real patch.
        x_hat (Parameter): (n, 3, h, w) synthetic LR patches in [0, 1].
        optimizer (Optimizer), base_lr (float): Adam on x_hat and its unscheduled learning rate.
        rlff (RandomLocalFourierFeatures): The RLFF (Eq. 4-5).
        local_real (Tensor): (P_r, p*p, C_out) real local features.
        labels_real (Tensor), centroids (Tensor), num_groups (int): K-means groups of the real local patches.
        patches_per_image (int), num_syn_patches (int): Local patches per LR patch, and of all of x_hat.
        bank (RealCharacteristicBank): Real-side characteristic functions (NCFD, Eq. 2-3).
        quotas (Tensor), assigned (Tensor), pair_index (Tensor): Group quotas, each synthetic local patch's group (-1:
            unassigned) and its L_pair partner.
        real (Tensor): (N_r, 3, h, w) the real LR patches matched (all N, or the lower PSNR_bic half with
            ``distill.real_side: psnr_bic``).
        x0 (Tensor): (n, 3, h, w) x_hat at the start.
        real_owner (Tensor), syn_owner (Tensor): (P_r,) and (P_s,) the real LR patch of each local patch (-1: noise).
        redraw_state (Tensor | None): The generator state before the last re-draw (replayed on resume).
        last_l_ins (float): L_ins of the last step.
    """
    index: int
    name: str
    path: str
    t0: float
    num_real: int
    generator: torch.Generator
    n_syn: int = 0
    init_ids: Any = None
    coords: Any = None
    x_hat: Any = None
    optimizer: Any = None
    base_lr: float = 0.0
    rlff: Any = None
    local_real: Any = None
    labels_real: Any = None
    centroids: Any = None
    num_groups: int = 0
    patches_per_image: int = 0
    num_syn_patches: int = 0
    bank: Any = None
    quotas: Any = None
    assigned: Any = None
    pair_index: Any = None
    real: Any = None
    x0: Any = None
    real_owner: Any = None
    syn_owner: Any = None
    redraw_state: Any = None
    last_l_ins: float = float('nan')


@MODEL_REGISTRY.register()
class IDCModel(DistillBaseModel):
    """Instance Data Condensation for SR (Algorithm 1), one training image per unit.

    Options: ``network_t`` / ``path.pretrain_network_t`` (teacher), optional ``network_up`` /
    ``path.pretrain_network_up`` (up-sampler, MambaIRv2 in the paper), ``path.distilled_root``, ``distill``
    (:data:`IDC_DEFAULTS`), ``datasets.train`` of type ``SRInstanceDataset``, and
    ``train.total_iter >= num_images * distill.iters_per_instance``.

    Raises:
        ValueError: Unknown ``distill`` keys or wrong types, values out of :data:`IDC_RANGES`, ``optim`` options torch
            refuses, a too small ``train.total_iter``, a bad schedule.
        FloatingPointError: (``optimize_parameters``) a non-finite loss or gradient, before the step, naming the
            instance, iteration and loss terms.
    """

    def __init__(self, opt):
        super().__init__(opt)
        self.cfg = merge_options(IDC_DEFAULTS, opt.get('distill'))
        self._check_options()
        self.amp = MixedPrecision(self.cfg['amp'], self.device)  # ValueError naming distill.amp (fp16 on a CPU)
        self.net_t = self.build_frozen_network('t')
        self.net_up = self.build_frozen_network('up') if opt.get('network_up') else self.net_t
        self.check_network_scale(self.net_up, 'up' if opt.get('network_up') else 't')
        self.logger.info(
            f'IDC: the HR side x_hat^HR is made by network_up ({type(self.net_up).__name__})' if opt.get('network_up')
            else f'IDC: the HR side x_hat^HR is made by the teacher network_t ({type(self.net_t).__name__}): '
            'no network_up given')
        self.tap = FeatureTap(self.net_t, self.cfg['feature_layer'])
        self.source = build_dataset(opt['datasets']['train'])
        self.scale = int(opt['scale'])
        self.T = self.steps_per_unit = int(self.cfg['iters_per_instance'])
        self.units_per_step = int(self.cfg['instances_per_step'])
        needed = self.groups_per_rank(self.source.num_instances) * self.T
        if int(opt['train']['total_iter']) < needed:
            raise ValueError(
                f'train.total_iter={opt["train"]["total_iter"]} is too small: ' +
                self.iters_needed_text(self.source.num_instances, 'images', self.T, 'distill.iters_per_instance'))
        self.log_idle_iterations(needed)
        root = self.distilled_root(opt)
        self.unit_names = list(self.source.names)
        for name, path in zip(self.unit_names, self.source.paths):  # before any work: names make the pair names
            check_source_name(f'{name}_idc0000', path)
        self.writer = self.open_writer(
            root,
            method='idc',
            scale=self.scale,
            source={
                'folder': opt['datasets']['train']['dataroot_gt'],
                'num_images': self.source.num_instances,
                'gt_size': self.source.gt_size,
                'stride': self.source.stride
            },
            size_control={'r': self.cfg['ratio']},
            options=opt,
            unit_sources=dict(zip(self.unit_names, ([path] for path in self.source.paths))))
        self.logger.info(f'IDC: {self.source.num_instances} instances x {self.T} iterations -> {root} '
                         f'({len(self.writer.finished_units)} already written)')

    def _check_options(self):
        cfg = self.cfg
        check_ranges(cfg, IDC_RANGES)
        check_optimizer(cfg['optim'], 'distill.optim')
        if not 0 < float(cfg['ratio']) <= 1:
            raise ValueError(f'distill.ratio (r) must be in (0, 1], got {cfg["ratio"]}')
        if cfg['init'] not in INIT_MODES:
            raise ValueError(f'distill.init must be one of {list(INIT_MODES)}, got {cfg["init"]!r}')
        if cfg['warmup_iters'] + cfg['assign_iters'] > cfg['iters_per_instance']:
            raise ValueError('distill.warmup_iters + distill.assign_iters must not exceed distill.iters_per_instance')
        if cfg['assign_steps'] < 1 or cfg['num_groups'] < 1:
            raise ValueError('distill.assign_steps and distill.num_groups must be >= 1')
        if int(cfg['instances_per_step']) < 1:
            raise ValueError(f'distill.instances_per_step (K) must be >= 1, got {cfg["instances_per_step"]}')
        if cfg['pair_rematch'] not in PAIR_REMATCH:
            raise ValueError(f'distill.pair_rematch must be one of {list(PAIR_REMATCH)}, got {cfg["pair_rematch"]!r}')
        if int(cfg['redraw_every']) < 0:
            raise ValueError(f'distill.redraw_every must be >= 0 (0: never), got {cfg["redraw_every"]}')
        lowpass, gt_size = int(cfg['update_lowpass']), (self.opt['datasets'].get('train') or {}).get('gt_size')
        if lowpass < 0 or (lowpass > 1 and gt_size and (int(gt_size) // int(self.opt['scale'])) % lowpass):
            raise ValueError(f'distill.update_lowpass must be 0 (off) or a cell size >= 1 that divides the LR patch '
                             f'size (datasets.train.gt_size / scale = {gt_size} / {self.opt["scale"]}), got {lowpass}')
        if cfg['real_side'] not in REAL_SIDES:
            raise ValueError(f'distill.real_side must be one of {list(REAL_SIDES)}, got {cfg["real_side"]!r}')
        if cfg['lr_schedule'] not in ('constant', 'cosine'):
            raise ValueError(f"distill.lr_schedule must be 'constant' or 'cosine', got {cfg['lr_schedule']!r}")

    @property
    def inst(self):
        """The instance in progress (``self.unit``), an :class:`IDCInstance`, or None."""
        return self.unit

    # ------------------------------------------------------------------------------------------ instance start
    def start_unit(self, index, resumed):
        """Start instance ``index`` (step 1 of the module docstring) from ``resumed`` if given; ``num_real`` 0 for an
        image
        smaller than one patch.
        """
        cfg = self.cfg
        data = self.source.load_instance(index)
        inst = IDCInstance(
            index=index,
            name=data['name'],
            path=data['path'],
            t0=time.time(),
            num_real=data['lq'].shape[0],
            generator=self.unit_generator(index))
        if inst.num_real == 0:
            self.logger.warning(f'IDC instance {index + 1}: {data["path"]} {data["hr_shape"]} is smaller than one '
                                f'{self.source.gt_size}x{self.source.gt_size} patch: skipped, no pair written')
            return inst
        inst.init_ids, x0 = initial_x_hat(data['lq'], cfg['ratio'], cfg['init'], inst.generator, data['gt'],
                                          self.source.scale)
        real_ids = torch.arange(inst.num_real)
        if cfg['real_side'] == 'psnr_bic':  # match the image's informative half only (departure from the paper)
            real_ids = psnr_bic_lower_half(
                psnr_bic_batch(data['gt'].permute(0, 2, 3, 1).double().cpu().numpy(), scale=self.source.scale),
                x0.shape[0])
        real = data['lq'][real_ids].to(self.device)
        inst.n_syn = x0.shape[0]
        x0 = x0.to(self.device)
        inst.coords = data['coords']
        inst.x_hat = torch.nn.Parameter(x0)
        optim_cfg = dict(cfg['optim'])
        optim_type = optim_cfg.pop('type')
        inst.optimizer = getattr(torch.optim, optim_type)([inst.x_hat], **optim_cfg)
        inst.base_lr = optim_cfg['lr']

        inst.local_real = self._real_local_features(inst, real)  # (P_r, p*p, C_out), draws the RLFF channels
        inst.labels_real, inst.centroids = kmeans_groups(
            patch_descriptors(inst.local_real), cfg['num_groups'], seed=self.seed + index)
        inst.num_groups = inst.centroids.shape[0]
        inst.patches_per_image = inst.local_real.shape[0] // real.shape[0]
        inst.num_syn_patches = inst.n_syn * inst.patches_per_image
        inst.bank = RealCharacteristicBank(
            inst.local_real, inst.labels_real, inst.num_groups, cfg['ncfd']['bank_size'], generator=inst.generator)
        inst.quotas = group_quotas(inst.labels_real, inst.num_groups, inst.num_syn_patches)
        inst.assigned = torch.full((inst.num_syn_patches, ), -1, dtype=torch.long, device=self.device)
        inst.pair_index = torch.zeros(inst.num_syn_patches, dtype=torch.long, device=self.device)
        inst.real, inst.x0 = real, x0.detach().clone()
        ppi = inst.patches_per_image
        inst.real_owner = real_ids.to(self.device).repeat_interleave(ppi)  # indices into the image's N patches
        inst.syn_owner = inst.init_ids.to(self.device).repeat_interleave(ppi)
        self.logger.info(f'IDC instance {index + 1} of {self.source.num_instances} ({inst.name}): N={inst.num_real} '
                         f'real patches -> n={inst.n_syn} synthetic; {inst.local_real.shape[0]} real local patches '
                         f'in {inst.num_groups} groups')
        if resumed is not None:
            with torch.no_grad():
                inst.x_hat.copy_(resumed['x_hat'].to(self.device))
            inst.optimizer.load_state_dict(resumed['optimizer'])
            inst.assigned = resumed['assigned'].to(self.device)
            inst.pair_index = resumed['pair_index'].to(self.device)
            if resumed.get('redraw_state') is not None:  # replay the last re-draw: the same RLFF and bank
                inst.generator.set_state(resumed['redraw_state'])
                self._redraw(inst)
            inst.generator.set_state(resumed['generator'])
            inst.last_l_ins = float(resumed.get('last_l_ins', float('nan')))
            self.logger.info(f'IDC instance {inst.index + 1} ({inst.name}) resumed from its saved state')
        return inst

    def _start_instance(self, index):
        """Start instance ``index`` outside the train loop (profilers): ``self.unit`` is the fresh instance."""
        self.unit = self.start_unit(index, None)

    @torch.no_grad()
    def _real_local_features(self, inst, real):
        """A new RLFF for ``inst`` fitted to f(``real``); returns the real local features (P_r, p*p, C_out)."""
        cfg = self.cfg
        feat_real = self.amp.forward(self.tap.batched, real, cfg['real_batch_size'])  # float32
        inst.rlff = RandomLocalFourierFeatures(
            feat_real.shape[1],
            cfg['rlff']['kernel_size'],
            cfg['rlff']['num_channels'],
            cfg['rlff']['patch_size'],
            generator=inst.generator,
            device=self.device)
        inst.rlff.fit_bn(feat_real)
        return inst.rlff(feat_real)

    @torch.no_grad()
    def _redraw(self, inst):
        """Re-draw the RLFF channel subset and the NCFD frequencies, and recompute the real side on them (groups keep
        indices).

        NCFM draws new frequencies at every call; a re-draw every ``redraw_every`` steps gives that variety with the
        real
        side computed once per re-draw.
        """
        cfg = self.cfg
        inst.redraw_state = inst.generator.get_state()
        inst.local_real = self._real_local_features(inst, inst.real)
        desc = patch_descriptors(inst.local_real)
        sums = desc.new_zeros(inst.num_groups, desc.shape[1]).index_add_(0, inst.labels_real, desc)
        counts = torch.bincount(inst.labels_real, minlength=inst.num_groups).clamp(min=1).to(desc.dtype)
        inst.centroids = sums / counts[:, None]
        inst.bank = RealCharacteristicBank(
            inst.local_real, inst.labels_real, inst.num_groups, cfg['ncfd']['bank_size'], generator=inst.generator)

    # ------------------------------------------------------------------------------------------ one step
    def _assign_round(self, step):
        """Progressive assignment (Sec. 3.4): the round of ``step`` (the last if several fall on it)."""
        cfg = self.cfg
        rel = step - cfg['warmup_iters'] - 1
        num_steps, span = cfg['assign_steps'], cfg['assign_iters']
        if rel < 0 or rel > span:
            return None
        for j in range(num_steps, 0, -1):  # the last round on this step: rounds that fall on one step run as one
            if rel == round((j - 1) * span / num_steps):
                return j
        return None

    def _lr(self, inst, step):
        if self.cfg['lr_schedule'] == 'cosine':
            return 0.5 * inst.base_lr * (1 + math.cos(math.pi * (step - 1) / self.T))
        return inst.base_lr

    def idc_losses(self, inst, local_syn, step):
        """L = w_ins L_ins (+ w_group L_group + w_pair L_pair after the warm-up) of ``inst``, updating its assignment.

        Args:
            inst (IDCInstance): The instance.
            local_syn (Tensor): (P_s, p*p, C_out) local features of its x_hat.
            step (int): 1-based step inside the instance.

        Returns:
            dict[str, Tensor]: l_ins, l_group, l_pair, l_total (scalars).
        """
        cfg = self.cfg
        w = cfg['weights']
        losses = {}
        if step > cfg['warmup_iters']:
            j = self._assign_round(step)
            pair_ids = None
            if j is not None:
                target = assignment_target(j, cfg['assign_steps'], inst.num_syn_patches)
                before = inst.assigned.clone()
                inst.assigned = assign_progressive(
                    patch_descriptors(local_syn), inst.centroids, inst.quotas, inst.assigned, target)
                pair_ids = torch.nonzero((before < 0) & (inst.assigned >= 0)).squeeze(1)  # newly assigned
            if cfg['pair_rematch'] == 'step' or (cfg['pair_rematch'] == 'round' and j is not None):
                pair_ids = torch.nonzero(inst.assigned >= 0).squeeze(1)  # every assigned patch, matched again
            if pair_ids is not None and pair_ids.numel():
                exclude = inst.syn_owner if cfg['pair_exclude_source'] else None
                inst.pair_index[pair_ids] = nearest_real_in_group(local_syn, inst.local_real, inst.labels_real,
                                                                  inst.assigned, pair_ids, exclude, inst.real_owner)
        l_ins, l_group = multi_level_ncfd(inst.bank, local_syn, inst.assigned, cfg['ncfd']['num_freqs'],
                                          cfg['ncfd']['alpha'], inst.generator)
        losses['l_ins'] = l_ins
        if step > cfg['warmup_iters']:
            losses['l_group'] = l_group
            losses['l_pair'] = pair_loss(inst.local_real, local_syn, inst.assigned, inst.pair_index)
        total = w['ins'] * losses['l_ins']
        if 'l_group' in losses:
            total = total + w['group'] * losses['l_group'] + w['pair'] * losses['l_pair']
        losses['l_total'] = total
        return losses

    def step_unit(self, inst, step, current_iter):
        """One step of Algorithm 1 on ``inst`` alone: :meth:`step_units` with one instance."""
        return self.step_units([inst], step, current_iter)[0]

    def step_units(self, insts, step, current_iter):
        """One step of Algorithm 1 on the K = ``distill.instances_per_step`` instances together.

        One teacher forward and backward on the concatenated x_hat; each instance has its own RLFF, losses, schedule,
        generator and Adam, and the backward of sum_k L_k gives each x_hat the gradient it gets alone (no term couples
        instances). With ``distill.update_lowpass`` s > 1 each Adam update is low-passed (``ops/lowpass.py``; not in the
        paper); x_hat is clamped to [0, 1]. All losses and gradients are checked before any Adam step.

        Returns:
            list[bool]: Per instance, True for an image with no patch.

        Raises:
            FloatingPointError: A non-finite loss or gradient, naming the instance; no x_hat has moved.
        """
        active = [inst for inst in insts if inst.num_real]
        every = int(self.cfg['redraw_every'])
        if active:
            for inst in active:
                if every and step > 1 and (step - 1) % every == 0:
                    self._redraw(inst)
                for group in inst.optimizer.param_groups:
                    group['lr'] = self._lr(inst, step)
                inst.optimizer.zero_grad(set_to_none=True)
            x_hat = active[0].x_hat if len(active) == 1 else torch.cat([inst.x_hat for inst in active])
            feats = self.amp.forward(self.tap, x_hat).split([inst.n_syn for inst in active])  # float32 (amp)
            per_inst, wheres = [], []
            for inst, feat in zip(active, feats):
                losses = self.idc_losses(inst, inst.rlff(feat), step)
                where = (f'IDC instance {inst.index + 1} of {self.source.num_instances} ({inst.name}), iteration '
                         f'{current_iter} (step {step} of {self.T})')
                self.check_finite(losses, where)  # before backward / step: x_hat keeps its last finite values
                inst.last_l_ins = float(losses['l_ins'].detach())
                per_inst.append(losses)
                wheres.append(where)
            total = per_inst[0]['l_total'] if len(active) == 1 else sum(losses['l_total'] for losses in per_inst)
            self.amp.scale(total).backward()  # distill.amp fp16: scaled, unscaled below
            if self.amp.unscale([inst.optimizer for inst in active]):  # fp16 overflow: the scaler skips the step
                for inst, losses, where in zip(active, per_inst, wheres):
                    self.check_finite(losses, where, [inst.x_hat])
            lowpass = int(self.cfg['update_lowpass'])
            for inst in active:
                before = inst.x_hat.detach().clone() if lowpass > 1 else None
                self.amp.step(inst.optimizer)
                with torch.no_grad():
                    if before is not None:  # the step's change, low-passed (departure from the paper, see docs)
                        inst.x_hat.copy_(before + lowpass_update(inst.x_hat - before, lowpass))
                    inst.x_hat.clamp_(0, 1)
            self.amp.update()
            keys = per_inst[0].keys()  # every instance is at the same step: the same terms
            self.log_dict = {k: sum(float(losses[k].detach()) for losses in per_inst) / len(per_inst) for k in keys}
        return [not inst.num_real for inst in insts]

    # ------------------------------------------------------------------------------------------ instance end
    @torch.no_grad()
    def finish_unit(self, inst):
        """The instance's pairs: x_hat (LR) and x_hat^HR = network_up(x_hat) (the teacher unless given), clamped."""
        pairs = []
        if inst.num_real:
            x_hat = inst.x_hat.detach().clamp(0, 1)
            hr = self.net_up(x_hat).clamp(0, 1)
            for j in range(inst.n_syn):
                init = int(inst.init_ids[j])
                pairs.append({
                    'name': f'{inst.name}_idc{j:04d}',
                    'lq': x_hat[j].permute(1, 2, 0).float().cpu().numpy(),
                    'gt': hr[j].permute(1, 2, 0).float().cpu().numpy(),
                    'info': {
                        'instance': inst.name,
                        'instance_index': inst.index,
                        'source_image': inst.path,
                        'num_real_patches': inst.num_real,
                        'init': self.cfg['init'],
                        'init_patch_hr_yx': list(inst.coords[init]) if init >= 0 else None,
                        'x_hat_mad': float((x_hat[j] - inst.x0[j]).abs().mean()),  # displacement, LR [0, 1] units
                        'final_l_ins': inst.last_l_ins
                    },
                })
        return pairs

    def get_current_learning_rate(self):
        active = [inst for inst in self.units if getattr(inst, 'num_real', 0)]
        if active:
            return [active[0].optimizer.param_groups[0]['lr']]
        return [self.cfg['optim']['lr']]

    # ------------------------------------------------------------------------------------------ resume
    def unit_state(self):
        """The state of every instance in progress (a list, in unit order), or None between instances."""
        states = [{
            'unit_index': inst.index,
            'x_hat': inst.x_hat.detach().cpu(),
            'optimizer': inst.optimizer.state_dict(),
            'assigned': inst.assigned.cpu(),
            'pair_index': inst.pair_index.cpu(),
            'generator': inst.generator.get_state(),
            'redraw_state': inst.redraw_state,
            'last_l_ins': inst.last_l_ins
        } for inst in self.units if inst.num_real]
        return states or None

    def summary_fields(self):
        """``summary``: x_hat's displacement from its start (mean absolute difference per pair, LR [0, 1] units: mean,
        median,
        max) and the mean final L_ins.
        """
        pairs = self.writer.manifest.get('pairs', [])
        mad = sorted(p['x_hat_mad'] for p in pairs if 'x_hat_mad' in p)
        l_ins = {p['instance']: p['final_l_ins'] for p in pairs if 'final_l_ins' in p}
        if not mad:
            return None
        return {
            'summary': {
                'x_hat_mad_mean': sum(mad) / len(mad),
                'x_hat_mad_median': mad[len(mad) // 2],
                'x_hat_mad_max': mad[-1],
                'final_l_ins_mean': sum(l_ins.values()) / len(l_ins),
                'num_pairs': len(mad)
            }
        }

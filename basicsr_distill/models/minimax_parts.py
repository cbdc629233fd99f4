"""Minimax-SR's pieces outside the model: its unit dataclasses, the stage-1 data options, and the diffusion
schedulers of stage 2 (training) and stage 3 (sampling)."""
import torch
from dataclasses import dataclass
from typing import Any


@dataclass
class MinimaxStage2State:
    """Stage 2 (DiffFit fine-tuning) while it runs.

    Attributes:
        store (PatchStore): The N selected patches (uint8, read per step).
        labels (Tensor): (N,) pseudo-labels in [0, k) (CPU).
        generator (torch.Generator): The stage's seeded generator (flips, posterior noise, timesteps, noise, label
            dropout; batch order: one generator per epoch).
        optimizer (Optimizer): AdamW on the DiffFit tensors.
        ema (EMA): EMA of the DiT's trainable tensors.
        real_mem (FIFOMemory), syn_mem (FIFOMemory): Per-class memories of real and predicted latents.
        t0 (float): Start time (s).
    """
    store: Any
    labels: Any
    generator: torch.Generator
    optimizer: Any
    ema: Any
    real_mem: Any
    syn_mem: Any
    t0: float


@dataclass
class MinimaxClassUnit:
    """A stage-3 unit: pseudo-class ``index`` (named ``pseudo<index>``), sampled in one iteration."""
    index: int
    name: str
    t0: float


#: Stage-1 keys read from ``datasets.train`` (the data, as for IDC and GSDD); the rest of stage 1 is ``distill.stage1``.
MINIMAX_DATA_KEYS = ('dataroot_gt', 'meta_info_file', 'gt_size', 'stride')


def stage1_section(opt):
    """The stage-1 options for :func:`~basicsr_distill.data.patch_selection.run_stage1`: ``distill.stage1`` plus the
    data
    keys of ``datasets.train``, with ``scale`` the top-level SR scale (Eq. 1).

    Raises:
        ValueError: A data key in ``distill.stage1``, or a ``distill.stage1.scale`` other than ``scale`` (naming both).
    """
    stage1 = dict((opt.get('distill') or {}).get('stage1') or {})
    moved = [k for k in MINIMAX_DATA_KEYS if k in stage1]
    if moved:
        raise ValueError(f'option distill.stage1.{moved[0]} moved to datasets.train.{moved[0]} (the data options of '
                         f'Minimax-SR are in datasets.train, as for IDC and GSDD): move {moved}')
    if 'scale' in stage1 and stage1['scale'] != opt.get('scale'):
        raise ValueError(f'option distill.stage1.scale={stage1["scale"]!r} differs from the top-level scale='
                         f'{opt.get("scale")!r}: PSNR_bic (Eq. 1) is taken at the SR scale; remove '
                         'distill.stage1.scale (it follows scale)')
    if opt.get('scale') is not None:
        stage1['scale'] = opt['scale']
    train = (opt.get('datasets') or {}).get('train') or {}
    stage1.update({k: train[k] for k in MINIMAX_DATA_KEYS if k in train})
    return stage1


#: Stage-3 samplers (``distill.sample.scheduler``), see :func:`build_sampler`.
SAMPLERS = ('DDIMScheduler', 'DDPMScheduler')

#: What :func:`build_sampler` sets on top of the training schedule, whatever diffusers' defaults are: the reference
#: (DiT's ``gaussian_diffusion`` as Minimax Diffusion samples with it) predicts epsilon and never clips or thresholds
#: its x0-predictions (``clip_denoised=False``; diffusers' default ``clip_sample=True`` clips latents of roughly unit
#: spread to [-1, 1]).
SAMPLER_SETTINGS = {
    'clip_sample': False,
    'thresholding': False,
    'prediction_type': 'epsilon',
    'rescale_betas_zero_snr': False,
    'steps_offset': 0
}
#: Per sampler: DDPM steps at round(i (T - 1) / (n - 1)) as DiT's ``space_timesteps(T, 'n')`` (``linspace``), with
#: the fixed posterior variance (the learned-variance channels are not trained here, see docs/Methods_Minimax.md);
#: DDIM (eta 0) at t = (n - 1) s, ..., s, 0 with s = T // n (``leading``: DDIM always steps from t to t - s, so only
#: this spacing is consistent for every n; ``trailing`` and ``linspace`` are not unless n divides T), the last step
#: landing on a_0 = 1 (``set_alpha_to_one``).
SAMPLER_SPACING = {
    'DDPMScheduler': {
        'timestep_spacing': 'linspace',
        'variance_type': 'fixed_small'
    },
    'DDIMScheduler': {
        'timestep_spacing': 'leading',
        'set_alpha_to_one': True
    }
}


def build_sampler(name, train_config):
    """A fresh stage-3 sampler ``name`` (:data:`SAMPLERS`) on the training schedule, never clipping.

    Every setting that changes sampling is explicit (:data:`SAMPLER_SETTINGS`, :data:`SAMPLER_SPACING`); betas and T
    are the training scheduler's (``train_config``). Call ``set_timesteps`` before use.

    Raises:
        ValueError: ``name`` is not in :data:`SAMPLERS` (names the option).
    """
    if name not in SAMPLERS:
        raise ValueError(f'option distill.sample.scheduler must be one of {list(SAMPLERS)}, got {name!r}')
    import diffusers
    settings = dict(SAMPLER_SETTINGS, **SAMPLER_SPACING[name])
    keep = ('num_train_timesteps', 'beta_start', 'beta_end', 'beta_schedule', 'trained_betas')
    return getattr(diffusers, name)(**{k: train_config[k] for k in keep if k in train_config}, **settings)


def build_train_scheduler(num_train_timesteps, beta_schedule):
    """The fine-tuning ``DDPMScheduler`` with DiT's betas, ``clip_sample=False``.

    DiT scales the linear schedule by 1000 / T (beta from 1e-4 * 1000 / T to 0.02 * 1000 / T), diffusers does not: the
    scaled values are passed. Other schedules are diffusers' own.
    """
    from diffusers import DDPMScheduler
    extra = {}
    if beta_schedule == 'linear':
        extra = {'beta_start': 1e-4 * 1000 / num_train_timesteps, 'beta_end': 0.02 * 1000 / num_train_timesteps}
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, clip_sample=False, **extra)

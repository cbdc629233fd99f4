"""MinimaxDiffusionModel: the three stages end to end through BasicSR, persisted stages, resume inside stage 2."""
import numpy as np
import os
import os.path as osp
import pytest
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import (build_distill_model, minimax_opt, run_basicsr_train, straight_and_restarted, tiny_edsr_options,
                      write_option_file)

from basicsr_distill.distilled_set import read_manifest, validate_distilled_set
from basicsr_distill.models.minimax_diffusion_model import MinimaxDiffusionModel


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def _run(opt, tmp_path, monkeypatch, name):
    run_basicsr_train(write_option_file(dict(opt, name=name), tmp_path / f'{name}.yml'), tmp_path, monkeypatch)


def _model(opt):
    return build_distill_model(MinimaxDiffusionModel, opt)


def test_three_stages_through_basicsr_then_a_rerun_skips_them_and_edsr_trains(tmp_path, monkeypatch):
    opt = minimax_opt(tmp_path)
    _run(opt, tmp_path, monkeypatch, 'minimax_a')
    root = opt['path']['distilled_root']
    manifest = validate_distilled_set(root, scale=4, require_complete=True)
    assert manifest['method'] == 'minimax' and manifest['size_control'] == {'ipc': 2}
    assert sorted(manifest['units_finished']) == ['pseudo0', 'pseudo1'] and manifest['num_pairs'] == 4
    for pair in manifest['pairs']:
        assert pair['label'] in (0, 1) and isinstance(pair['seed'], int) and pair['hr_shape'][:2] == [64, 64]
        assert pair['lr_shape'][:2] == [16, 16]
    assert len({p['seed'] for p in manifest['pairs']}) == 4
    work = root + '_work'
    stamps = {f: os.stat(osp.join(work, f)).st_mtime_ns for f in ('stage1_selection.json', 'stage2_difffit.pth')}
    updated = manifest['updated']

    _run(opt, tmp_path, monkeypatch, 'minimax_b')  # a restart: every stage is found on disk and skipped
    assert {f: os.stat(osp.join(work, f)).st_mtime_ns for f in stamps} == stamps
    assert read_manifest(root)['updated'] == updated

    edsr = tiny_edsr_options('edsr_on_minimax', {'type': 'DistilledPairedDataset', 'dataroot': root}, gt_size=32)
    _run(edsr, tmp_path, monkeypatch, 'edsr_on_minimax')
    assert osp.isfile(tmp_path / 'experiments' / 'edsr_on_minimax' / 'models' / 'net_g_latest.pth')


def test_resume_inside_stage2_gives_the_same_fine_tuned_weights(tmp_path):
    a, b = minimax_opt(tmp_path / 'a', 4), minimax_opt(tmp_path / 'b', 4)
    straight, restarted = straight_and_restarted(_model, a, b, total=5, stop=3)
    ta = torch.load(straight.stage2_path, weights_only=True)
    tb = torch.load(restarted.stage2_path, weights_only=True)
    assert ta['trainable'].keys() == tb['trainable'].keys()
    for name in ta['trainable']:
        assert torch.equal(ta['trainable'][name], tb['trainable'][name]), name
        assert torch.equal(ta['ema'][name], tb['ema'][name]), name


def test_missing_local_dit_names_the_option(tmp_path):
    opt = minimax_opt(tmp_path)
    opt['distill']['dit'] = {'pretrained': str(tmp_path / 'no_dit')}
    with pytest.raises(FileNotFoundError, match='distill.dit.pretrained'):
        _model(opt)


def test_too_small_total_iter_is_refused(tmp_path):
    opt = minimax_opt(tmp_path)
    opt['train']['total_iter'] = 3
    with pytest.raises(ValueError, match='train.total_iter=3 is too small'):
        _model(opt)


# ------------------------------------------------------------------------------------ stage 2: data and losses
def _stage2_model(tmp_path, **finetune):
    """A model after stage 1 with stage 2 started (no step taken)."""
    opt = minimax_opt(tmp_path)
    opt['distill']['finetune'].update(finetune)
    model = _model(opt)
    model.optimize_parameters(1)
    model._start_stage2()
    return model


def test_the_patch_store_holds_the_selected_patches_and_is_reused(tmp_path):
    from basicsr_distill.data.patch_candidates import iter_patches
    from basicsr_distill.data.patch_selection import ensure_patch_store
    model = _stage2_model(tmp_path)
    records = model.selection['records']
    assert model.store.shape == (len(records), 64, 64, 3)
    for i, patch in enumerate(iter_patches(records)):  # 8-bit PNGs: uint8 storage is exact
        assert np.array_equal(model.store.read([i])[0].astype(np.float32) / 255., patch)
    stamp = os.stat(model.store_path).st_mtime_ns
    assert ensure_patch_store(model.selection, model.store_path).shape == model.store.shape
    assert os.stat(model.store_path).st_mtime_ns == stamp  # same selection: reused
    with open(model.store_path, 'r+b') as f:  # truncated: rewritten
        f.truncate(osp.getsize(model.store_path) - 1)
    assert len(ensure_patch_store(model.selection, model.store_path)) == len(records)
    other = dict(model.selection, records=records[:1])
    assert len(ensure_patch_store(other, model.store_path)) == 1  # another selection: rewritten


def test_real_batches_are_flipped_fresh_posterior_samples_in_epoch_order(tmp_path):
    from basicsr_distill.archs.dit_difffit_arch import vae_encode
    model = _stage2_model(tmp_path)
    n, size = len(model.ft.labels), 2
    steps = 2 * n // size + 1
    order = torch.cat([model.batch_indices(s) for s in range(1, steps + 1)])
    assert sorted(order[:n].tolist()) == list(range(n)) and sorted(order[n:2 * n].tolist()) == list(range(n))
    assert not torch.equal(order[:n], order[n:2 * n])  # a new order every epoch
    again = _model(minimax_opt(tmp_path))  # the same order in another model (a rerun, a resume): a function of the step
    again.ft = model.ft
    assert torch.equal(torch.cat([again.batch_indices(s) for s in range(1, steps + 1)]), order)

    global_state = torch.get_rng_state()
    gen_state = model.ft.generator.get_state()
    z0, labels = model.real_batch(1)
    assert torch.equal(torch.get_rng_state(), global_state)  # every draw from the stage's generator
    assert z0.shape == (size, ) + tuple(model.ft_latent_shape) and torch.equal(labels, model.ft.labels[order[:2]])
    redo = torch.Generator()
    redo.set_state(gen_state)
    flips = torch.rand(size, generator=redo) < 0.5
    noise = torch.randn(z0.shape, generator=redo)
    assert torch.equal(z0, model.encode_real(order[:2], flips, noise))
    model.ft.generator.set_state(gen_state)
    assert torch.equal(model.real_batch(1)[0], z0)  # the same generator state: identical (reruns, resume)
    assert not torch.equal(model.real_batch(1)[0], z0)  # the next draw: a fresh posterior sample (and flips)

    idx = torch.tensor([0, 0])
    patch = torch.from_numpy(model.store.read([0])).permute(0, 3, 1, 2).float() / 255.
    zero = torch.zeros((2, ) + tuple(model.ft_latent_shape))
    with torch.no_grad():
        mode = vae_encode(model.vae, patch, sample=False)
        mode_flipped = vae_encode(model.vae, patch.flip(-1), sample=False)
    both = model.encode_real(idx, torch.tensor([False, True]), zero)  # zero noise: the posterior mean (mode)
    assert torch.allclose(both[0], mode[0], atol=1e-6) and torch.allclose(both[1], mode_flipped[0], atol=1e-6)
    sampled = model.encode_real(idx, torch.tensor([False, False]), torch.randn(zero.shape, generator=redo))
    assert not torch.allclose(sampled[0], sampled[1])  # a posterior sample, not the mode

    unflipped = _stage2_model(tmp_path / 'noflip', hflip=False)
    gen_state = unflipped.ft.generator.get_state()
    z0, _ = unflipped.real_batch(1)
    redo.set_state(gen_state)
    noise = torch.randn(z0.shape, generator=redo)  # no flip drawn
    assert torch.equal(z0, unflipped.encode_real(unflipped.batch_indices(1), torch.zeros(2, dtype=torch.bool), noise))


class _Spy:
    """Wraps a function, recording its arguments (and the result)."""

    def __init__(self, fn, record=None):
        self.fn, self.calls, self.record = fn, [], record

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        self.calls.append(self.record(*args) if self.record else (args, out))
        return out


def test_l_sr_takes_the_decoded_x0_with_its_gradient_at_the_chosen_timesteps(tmp_path, monkeypatch):
    from basicsr_distill.models import minimax_diffusion_model as mm
    model = _stage2_model(tmp_path, sr_timesteps=[0, 500], batch_size=8, lambda_r=0., lambda_d=0.)
    decode, loss = _Spy(mm.vae_decode), _Spy(mm.sr_loss)
    monkeypatch.setattr(mm, 'vae_decode', decode)
    monkeypatch.setattr(mm, 'sr_loss', loss)
    noising = _Spy(model.train_scheduler.add_noise)
    monkeypatch.setattr(model.train_scheduler, 'add_noise', noising)
    z0, labels = model.real_batch(1)
    losses, pred_x0, objective = model.finetune_losses(z0, labels, model.ft.generator)
    t = noising.calls[0][0][2]
    chosen = (t < 500).nonzero().flatten()
    assert 0 < len(chosen) < 8  # this seed: some timesteps in range, some not
    (_, latents), _ = decode.calls[0]
    assert torch.equal(latents.detach(), pred_x0[chosen])  # only the chosen samples are decoded
    (images, scale), value = loss.calls[0]
    assert images.requires_grad and images.grad_fn is not None and scale == 4
    assert images.shape == (len(chosen), 3, 64, 64)
    assert losses['l_sr'].item() == pytest.approx(value.item() * len(chosen) / 8)
    # L_SR's gradient reaches the DiffFit tensors (the paper's Eq. 5 path; the released code's has none)
    params = [p for n, p in model.dit.named_parameters() if n in set(model.trainable)]
    grads = torch.autograd.grad(losses['l_sr'], params, allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0

    none_in_range = _stage2_model(tmp_path / 'none', sr_timesteps=[0, 1])
    decode.calls.clear()
    for step in (1, 2):
        z0, labels = none_in_range.real_batch(step)
        losses, _, _ = none_in_range.finetune_losses(z0, labels, none_in_range.ft.generator)
        assert losses['l_sr'].item() == 0
    assert not decode.calls  # nothing to decode


def test_the_epsilon_channels_are_the_first_c_and_the_variance_channels_enter_no_loss(tmp_path, monkeypatch):
    model = _stage2_model(tmp_path, sr_timesteps=[0, 1000])
    channels = model.dit.config.in_channels
    assert model.dit.config.out_channels == 2 * channels  # learned sigma, as DiT-XL/2

    def eps_zero_variance_nan(module, args, output):
        sample = output.sample
        return type(output)(sample=torch.cat([sample[:, :channels] * 0, sample[:, channels:] * float('nan')], 1))

    model.dit.register_forward_hook(eps_zero_variance_nan)
    noising = _Spy(model.train_scheduler.add_noise)
    monkeypatch.setattr(model.train_scheduler, 'add_noise', noising)
    z0, labels = model.real_batch(1)
    losses, pred_x0, _ = model.finetune_losses(z0, labels, model.ft.generator)
    (_, noise, t), z_t = noising.calls[0]
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses['l_simple'].item() == pytest.approx(float((noise**2).mean()))  # mse(eps_theta = 0, eps)
    a = model.train_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(pred_x0, z_t / a.sqrt(), rtol=1e-5)  # z_hat from epsilon = 0


def test_memories_are_pushed_after_the_losses_with_the_batch_latents_and_predictions(tmp_path, monkeypatch):
    from basicsr_distill.models import minimax_diffusion_model as mm
    model = _model(minimax_opt(tmp_path, finetune_iters=3))
    model.optimize_parameters(1)
    seen = _Spy(mm.representativeness_loss, lambda pred, labels, mem: (len(mem), labels.clone()))
    seen_d = _Spy(mm.diversity_loss, lambda pred, labels, mem: len(mem))
    monkeypatch.setattr(mm, 'representativeness_loss', seen)
    monkeypatch.setattr(mm, 'diversity_loss', seen_d)
    batches = _Spy(model.finetune_losses)
    monkeypatch.setattr(model, 'finetune_losses', batches)
    model.optimize_parameters(2)
    assert seen.calls[0][0] == 0 and seen_d.calls[0] == 0  # step 1 compares with empty memories
    (z0, labels, _), (_, pred_x0, _) = batches.calls[0]
    for c in labels.unique().tolist():
        mine = (labels == c).cpu()
        assert torch.equal(model.ft.real_mem.get(c), z0[mine].flatten(1).cpu())  # the batch's real latents
        assert torch.equal(model.ft.syn_mem.get(c), pred_x0[mine].flatten(1).cpu())  # its detached predictions
    model.optimize_parameters(3)
    assert seen.calls[1][0] == 2 and seen_d.calls[1] == 2  # step 2: step 1's batch only (not itself)
    assert len(model.ft.real_mem) == len(model.ft.syn_mem) == 4


# ------------------------------------------------------------------------------------------- stage 3: sampler
def _dit_timesteps(num_steps, steps=1000):
    """DiT's space_timesteps(T, 'n'): round(i (T - 1) / (n - 1)), by hand."""
    stride, cur, out = (steps - 1) / (num_steps - 1), 0.0, []
    for _ in range(num_steps):
        out.append(round(cur))
        cur += stride
    return sorted(out, reverse=True)


@pytest.mark.parametrize('name', ['DDIMScheduler', 'DDPMScheduler'])
def test_no_sampler_clips_and_every_inherited_default_is_set(name):
    import diffusers

    from basicsr_distill.models.minimax_diffusion_model import SAMPLERS, build_sampler, build_train_scheduler
    assert name in SAMPLERS and set(SAMPLERS) == {'DDIMScheduler', 'DDPMScheduler'}
    train = build_train_scheduler(1000, 'linear')
    sampler = build_sampler(name, train.config)
    cfg = sampler.config
    assert not cfg.clip_sample and not cfg.thresholding and cfg.prediction_type == 'epsilon'
    assert not cfg.rescale_betas_zero_snr and cfg.steps_offset == 0
    assert torch.equal(sampler.alphas_cumprod, train.alphas_cumprod)
    sampler.set_timesteps(50)
    if name == 'DDPMScheduler':  # the reference's steps, fixed posterior variance
        assert sampler.timesteps.tolist() == _dit_timesteps(50) and cfg.variance_type == 'fixed_small'
    else:  # t = 980, 960, ..., 0: DDIM's previous step is always t - 20; the last lands on a_0 = 1
        assert sampler.timesteps.tolist() == list(range(980, -1, -20)) and cfg.set_alpha_to_one
    # behaviour: at t = 999 a latent of unit spread has an x0-prediction far outside [-1, 1]; it is kept
    z = torch.full((1, 4, 2, 2), 0.5)
    t = sampler.timesteps[0]
    step = sampler.step(torch.zeros_like(z), t, z, generator=torch.Generator().manual_seed(0))
    expected = z / train.alphas_cumprod[t].sqrt()
    assert expected.min() > 50 and torch.allclose(step.pred_original_sample, expected)
    # the check bites: the sampler built from the training config with diffusers' defaults clips
    clipping = getattr(diffusers, name).from_config(diffusers.DDPMScheduler().config)
    clipping.set_timesteps(50)
    t = clipping.timesteps[0]
    assert clipping.step(torch.zeros_like(z), t, z).pred_original_sample.max() == 1


@pytest.mark.parametrize('name', ['DDIMScheduler', 'DDPMScheduler'])
def test_sampled_latents_are_not_clipped(tmp_path, monkeypatch, name):
    """End to end: with epsilon = 0 the last latent is z_T / sqrt(a_666) (DDIM, 3 steps from t = 666: the steps
    telescope) or beyond [-1, 1] (DDPM); a clipping sampler would end inside [-1, 1]."""
    from basicsr_distill.models import minimax_diffusion_model as mm
    opt = minimax_opt(tmp_path)
    opt['distill']['sample'].update(scheduler=name, images_per_class=1, steps=3)
    model = _model(opt)
    model.dit.register_forward_hook(lambda module, args, output: type(output)(sample=output.sample * 0))
    decode = _Spy(mm.vae_decode)
    monkeypatch.setattr(mm, 'vae_decode', decode)
    _, seeds = model.sample_class(1)
    (_, latent), _ = decode.calls[0]
    assert latent.abs().max() > 10
    if name == 'DDIMScheduler':
        z_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seeds[0]))
        assert torch.allclose(latent, z_t / model.train_scheduler.alphas_cumprod[666].sqrt(), rtol=1e-4)


def test_train_schedule_is_dits_linear_schedule():
    from basicsr_distill.models.minimax_diffusion_model import build_train_scheduler
    assert torch.allclose(build_train_scheduler(1000, 'linear').betas, torch.linspace(1e-4, 0.02, 1000))
    assert torch.allclose(build_train_scheduler(500, 'linear').betas, torch.linspace(2e-4, 0.04, 500))  # x 1000 / T
    assert not build_train_scheduler(1000, 'linear').config.clip_sample


def test_unknown_sampler_and_bad_sr_timesteps_are_refused(tmp_path):
    opt = minimax_opt(tmp_path)
    opt['distill']['sample']['scheduler'] = 'EulerDiscreteScheduler'
    with pytest.raises(ValueError, match=r"distill.sample.scheduler must be one of \['DDIMScheduler'"):
        _model(opt)
    for bad in ([0], [5, 5], [-1, 10], [0, 1001], [0.0, 10]):
        opt = minimax_opt(tmp_path)
        opt['distill']['finetune']['sr_timesteps'] = bad
        with pytest.raises(ValueError, match='distill.finetune.sr_timesteps must be'):
            _model(opt)


# -------------------------------------------------------------------------------------------- stage 1: scale
def test_stage1_scale_follows_the_top_level_scale_and_a_mismatch_is_refused(tmp_path):
    opt = minimax_opt(tmp_path)
    opt['scale'] = 2
    model = _model(opt)
    assert model.stage1_opt['scale'] == 2
    assert model.stage1()['meta']['options']['scale'] == 2  # PSNR_bic at x2
    opt['distill']['stage1']['scale'] = 2  # the same value given twice: accepted
    opt['path']['distilled_root'] = str(tmp_path / 'other')
    assert _model(opt).stage1_opt['scale'] == 2
    opt['distill']['stage1']['scale'] = 4
    with pytest.raises(ValueError, match=r'distill.stage1.scale=4 differs from the top-level scale=2'):
        _model(opt)

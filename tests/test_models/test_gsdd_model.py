"""GSDDModel: chunked gradients equal the full graph, Eq. 7-9 wiring, and an end-to-end run through BasicSR."""
import os
import os.path as osp
import pytest
import shutil
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import (REPO, build_distill_model, data_path, gsdd_classes, gsdd_opt, run_basicsr_train,
                      straight_and_restarted, tiny_edsr_options, write_option_file)

from basicsr_distill.distilled_set import file_sha256, read_manifest, validate_distilled_set
from basicsr_distill.losses.dm_loss import dm_distance, gsdd_objective, paired_distance
from basicsr_distill.models.gsdd_model import GSDDModel
from basicsr_distill.ops.dsa import DSAConfig, apply_dsa, sample_dsa_params


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def _model(opt):
    return build_distill_model(GSDDModel, opt)


def _full_graph(model, unit, real, params, lam):
    """Eq. 7-9 with one autograd graph over all latents (what the chunked passes must reproduce)."""
    z = unit.z.detach().clone().requires_grad_(True)
    feat_syn = model._embed(model.generate(z), params)
    with torch.no_grad():
        feat_real = model._embed(real, params)
        feat_pair = model._embed(unit.x_pair, params)
    l_dis, r = dm_distance(feat_real, feat_syn), paired_distance(feat_pair, feat_syn)
    loss = gsdd_objective(l_dis, r, lam)
    loss.backward()
    return {'l_dis': l_dis.item(), 'r': r.item(), 'l_total': loss.item()}, z.grad


@pytest.mark.parametrize('chunk', [1, 2, 3])
def test_chunked_latent_gradients_equal_the_full_graph(tmp_path, chunk):
    model = _model(gsdd_opt(tmp_path, gsdd_classes(tmp_path), chunk_size=chunk))
    model._start_unit(0)
    unit, gen = model.unit, torch.Generator().manual_seed(5)
    model._draw_extractor(gen)
    real = model.source.sample_class_batch(0, 4, gen)
    params = sample_dsa_params(DSAConfig(strategy='scale'), 32, 32, gen)  # a non-trivial differentiable warp
    losses = model.gsdd_step_losses(unit, real, params)
    ref_losses, ref_grad = _full_graph(model, unit, real, params, 0.1)
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    torch.testing.assert_close(unit.z.grad, ref_grad, rtol=1e-3, atol=1e-5)  # float32 summation order
    assert ref_grad.abs().sum() > 0


@pytest.mark.parametrize('lam, key', [(0.0, 'l_dis'), (1.0, 'r')])
def test_lambda_extremes_reduce_to_one_term(tmp_path, lam, key):
    model = _model(gsdd_opt(tmp_path, gsdd_classes(tmp_path), lam=lam))
    model._start_unit(0)
    gen = torch.Generator().manual_seed(1)
    model._draw_extractor(gen)
    real = model.source.sample_class_batch(0, 4, gen)
    losses = model.gsdd_step_losses(model.unit, real, sample_dsa_params(model.dsa_cfg, 32, 32, gen), False)
    assert losses['l_total'] == pytest.approx(losses[key]) and losses['l_dis'] > 0 and losses['r'] > 0


def test_r_pairs_each_latent_with_its_own_real_image(tmp_path):
    model = _model(gsdd_opt(tmp_path, gsdd_classes(tmp_path)))
    model._start_unit(1)
    unit = model.unit
    # every latent keeps the crop it was inverted from, taken from an image of its class
    assert len(unit.pair_paths) == 3 and all(p in model.source.images_of(1) for p in unit.pair_paths)
    gen = torch.Generator().manual_seed(2)
    model._draw_extractor(gen)
    params = sample_dsa_params(DSAConfig(strategy='none'), 32, 32, gen)
    real = model.source.sample_class_batch(1, 4, gen)
    before = model.gsdd_step_losses(unit, real, params, accumulate=False)
    with torch.no_grad():  # swapping two latents breaks the pairs (R changes) but not the mean (L_dis unchanged)
        unit.z.copy_(unit.z[[1, 0, 2]])
    after = model.gsdd_step_losses(unit, real, params, accumulate=False)
    assert after['l_dis'] == pytest.approx(before['l_dis'], rel=1e-5) and after['r'] > before['r'] * 1.01
    # and R is paired_distance of psi(A(x_k)) and psi(A(G(z_k))) row by row
    with torch.no_grad():
        direct = paired_distance(
            model._embed(apply_dsa(unit.x_pair, params), {
                'ops': [],
                'family': '',
                'height': 32,
                'width': 32
            }), model._embed(model.generate(unit.z), params))
    assert after['r'] == pytest.approx(direct.item(), rel=1e-5)


def test_inversion_fits_the_paired_images(tmp_path):
    inversion = {'iters': 20, 'lr': 0.02, 'w_feat': 0.0, 'w_pix': 1.0}
    model = _model(gsdd_opt(tmp_path, gsdd_classes(tmp_path), inversion=inversion))
    model._start_unit(0)
    unit = model.unit
    from basicsr_distill.data.sr_patches import bicubic_lr
    z0 = torch.stack([torch.from_numpy(bicubic_lr(x.permute(1, 2, 0).numpy(), 4)) for x in unit.x_pair])
    with torch.no_grad():
        start = ((model.generate(z0.permute(0, 3, 1, 2)) - unit.x_pair)**2).mean()
        end = ((model.generate(unit.z) - unit.x_pair)**2).mean()
    assert end < start  # Eq. 5 decreased from the bicubic initialisation


def test_feature_inversion_needs_network_f(tmp_path):
    opt = gsdd_opt(tmp_path, gsdd_classes(tmp_path), inversion={'iters': 1, 'lr': 0.01, 'w_feat': 1.0, 'w_pix': 1.0})
    with pytest.raises(ValueError, match='network_f'):
        _model(opt)


def test_gsdd_through_basicsr_train_pipeline_then_edsr_trains_on_it(tmp_path, monkeypatch):
    opt = gsdd_opt(tmp_path, gsdd_classes(tmp_path))
    opt['network_f'] = {'type': 'IMDN', 'block_type': 'imdb_ntire22', 'upscale': 4}
    opt['path']['pretrain_network_f'] = osp.join(REPO, 'weights', 'imdn_baseline.pth')
    opt['distill']['inversion'] = {'iters': 2, 'lr': 0.01, 'w_feat': 1.0, 'w_pix': 1.0}
    run_basicsr_train(write_option_file(opt, tmp_path / 'gsdd.yml'), tmp_path, monkeypatch)

    root = opt['path']['distilled_root']
    manifest = validate_distilled_set(root, scale=4, require_complete=True)
    assert manifest['method'] == 'gsdd' and manifest['size_control'] == {'ipc': 3}
    assert sorted(manifest['units_finished']) == ['bsd', 'tt'] and manifest['num_pairs'] == 6
    assert sorted({p['class'] for p in manifest['pairs']}) == ['bsd', 'tt']
    assert all(p['hr_shape'][:2] == [32, 32] and p['lr_shape'][:2] == [8, 8] for p in manifest['pairs'])
    classes = {p['class']: osp.dirname(p['paired_image']) for p in manifest['pairs']}
    for cls, folder in classes.items():  # each class records the SHA-256 of every image of its folder
        images = sorted(osp.join(folder, v) for v in os.listdir(folder))
        assert manifest['unit_sources'][cls] == {v: file_sha256(v) for v in images}

    train_opt = tiny_edsr_options('edsr_on_gsdd', {'type': 'DistilledPairedDataset', 'dataroot': root})
    run_basicsr_train(write_option_file(train_opt, tmp_path / 'edsr.yml'), tmp_path, monkeypatch)
    assert osp.isfile(tmp_path / 'experiments' / 'edsr_on_gsdd' / 'models' / 'net_g_latest.pth')


def test_classless_flat_folder_is_one_class_or_pseudo_classes(tmp_path):
    flat = tmp_path / 'flat'
    flat.mkdir()
    for name in ('tt1.png', 'tt2.png', 't46.png', 'tt25.png'):
        shutil.copy(data_path('data', 'train', 't91', name), flat / name)
    one = _model(gsdd_opt(tmp_path / 'a', str(flat)))
    assert one.source.class_names == ['flat'] and read_manifest(str(
        tmp_path / 'a' / 'distilled'))['source']['num_classes'] == 1
    opt = gsdd_opt(tmp_path / 'b', str(flat))
    opt['datasets']['train']['pseudo_labels'] = {'num_classes': 2, 'seed': 0}
    two = _model(opt)
    assert two.source.class_names == ['pseudo0', 'pseudo1']
    assert sum(len(two.source.images_of(c)) for c in range(2)) == 4


def test_resume_inside_a_class_gives_the_same_pairs(tmp_path):
    import numpy as np
    classes = gsdd_classes(tmp_path)
    opt_a, opt_b = gsdd_opt(tmp_path / 'a', classes), gsdd_opt(tmp_path / 'b', classes)
    # resumes the class from its saved latents, Adam state and generator
    straight_and_restarted(_model, opt_a, opt_b, total=3, stop=2)
    names = [p['name'] for p in read_manifest(opt_a['path']['distilled_root'])['pairs']]
    assert names == [p['name'] for p in read_manifest(opt_b['path']['distilled_root'])['pairs']] and names
    for name in names:
        a = np.load(osp.join(opt_a['path']['distilled_root'], 'lr_float', f'{name}.npy'))
        b = np.load(osp.join(opt_b['path']['distilled_root'], 'lr_float', f'{name}.npy'))
        assert np.array_equal(a, b)


def test_lr_zero_keeps_the_inverted_start(tmp_path):
    """The ``gsdd_init`` control of the benchmark: optim lr 0 writes G(z) of the GAN-inversion start, unmatched."""
    dataroot = gsdd_classes(tmp_path)
    model = _model(gsdd_opt(tmp_path, dataroot, optim={'type': 'Adam', 'lr': 0.0}))
    model._start_unit(0)
    unit = model.unit
    z0 = unit.z.detach().clone()
    for step in range(1, model.T + 1):
        model.step_unit(unit, step, step)
    assert unit.z.grad is not None and unit.z.grad.abs().sum() > 0  # the loss was computed and back-propagated
    assert torch.equal(unit.z.detach(), z0)
    moving = _model(gsdd_opt(tmp_path / 'moving', dataroot))  # the default lr: the same start, then matched away
    moving._start_unit(0)
    unit_m = moving.unit
    torch.testing.assert_close(unit_m.z.detach(), z0)
    for step in range(1, moving.T + 1):
        moving.step_unit(unit_m, step, step)
    assert not torch.equal(unit_m.z.detach(), z0)


def _expected_pair_crops(model, index, candidates):
    """x_k drawn by hand: the class's image order, then per latent ``candidates`` uniform crops, the lowest PSNR_bic."""
    from basicsr_distill.ops.psnr_bic import psnr_bic
    generator = model.unit_generator(index)
    paths = model.source.images_of(index)
    order = torch.randperm(len(paths), generator=generator).tolist()
    chosen, firsts = [], []
    for k in range(int(model.cfg['ipc'])):
        crops = [model.source.random_crop(paths[order[k % len(order)]], generator) for _ in range(candidates)]
        scores = [psnr_bic(c.permute(1, 2, 0).numpy(), 4) for c in crops]
        chosen.append(crops[scores.index(min(scores))])
        firsts.append(crops[0])
    return torch.stack(chosen), torch.stack(firsts)


def test_pair_crop_candidates_keep_the_lowest_psnr_bic_crop(tmp_path):
    """M = 1 is the paper's uniform crop; M = 4 keeps, per latent, the lowest-PSNR_bic of 4 seeded crops."""
    dataroot = gsdd_classes(tmp_path)
    paper = _model(gsdd_opt(tmp_path / 'm1', dataroot))
    paper._start_unit(0)
    expected, _ = _expected_pair_crops(paper, 0, 1)
    torch.testing.assert_close(paper.unit.x_pair, expected, rtol=0, atol=0)

    model = _model(gsdd_opt(tmp_path / 'm4', dataroot, ipc=6, pair_crop_candidates=4))
    model._start_unit(0)
    expected, firsts = _expected_pair_crops(model, 0, 4)
    torch.testing.assert_close(model.unit.x_pair, expected, rtol=0, atol=0)
    assert not torch.equal(expected, firsts)  # the rule picked another crop than the first draw somewhere
    from basicsr_distill.ops.psnr_bic import psnr_bic
    mean_bic = [sum(psnr_bic(c.permute(1, 2, 0).numpy(), 4) for c in x) / len(x) for x in (expected, firsts)]
    assert mean_bic[0] < mean_bic[1]  # lower PSNR_bic on average than uniform crops of the same images


@pytest.mark.parametrize('bad', [0, -2, True, 2.5, '3'])
def test_pair_crop_candidates_must_be_a_positive_integer(tmp_path, bad):
    with pytest.raises(ValueError, match='distill.pair_crop_candidates'):
        _model(gsdd_opt(tmp_path, gsdd_classes(tmp_path), pair_crop_candidates=bad))

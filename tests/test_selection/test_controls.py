"""The controls that isolate what a method adds: ``random_teacher_hr`` (random real LR, HR by the teacher) and
``idc_init`` (IDC's initial x_hat, HR by the teacher), on bundled real T91 images with the bundled IMDN teacher;
``random_generator_hr`` (GSDD's: HR = G(random real LR), LR = its bicubic) with the bundled SRGAN generator."""
import cv2
import numpy as np
import os.path as osp
import pytest
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import build_distill_model, copy_images, data_path

from basicsr_distill.data.sr_patches import bicubic_lr
from basicsr_distill.distilled_set import DistilledSetWriter, read_manifest, validate_distilled_set
from basicsr_distill.models.idc_model import IDCModel
from basicsr_distill.selection.pool import load_hr_network, network_hr, select_subset


@pytest.fixture(scope='module')
def idc_options(tmp_path_factory):
    """IDC-style options: 3 T91 images, 96 / 24 patches at stride 48, IMDN teacher, r = 0.1, seed 3."""
    root = tmp_path_factory.mktemp('controls')
    hr = root / 'hr'
    copy_images(hr, ['t1.png', 't10.png', 't12.png'])
    return {
        'name': 'controls_test',
        'model_type': 'IDCModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 3,
        'datasets': {
            'train': {
                'name': 't91_3',
                'type': 'SRInstanceDataset',
                'dataroot_gt': str(hr),
                'gt_size': 96,
                'stride': 48,
                'io_backend': {
                    'type': 'disk'
                }
            }
        },
        'network_t': {
            'type': 'IMDN',
            'block_type': 'imdb_ntire22',
            'upscale': 4
        },
        'path': {
            'pretrain_network_t': data_path('weights', 'imdn_baseline.pth'),
            'param_key_t': 'auto',
            'strict_load_t': True,
            'distilled_root': str(root / 'idc'),
        },
        'distill': {
            'ratio': 0.1,
            'init': 'real',
            'iters_per_instance': 2,
            'warmup_iters': 1,
            'assign_iters': 1,
            'assign_steps': 1,
            'num_groups': 2,
            'ncfd': {
                'num_freqs': 16,
                'alpha': 0.5,
                'bank_size': 64
            }
        },
        'train': {
            'total_iter': 6
        },
    }


def _pngs(root, sub):
    m = read_manifest(root)
    return {p['name']: cv2.imread(osp.join(root, sub, f'{p["name"]}.png'))[..., ::-1] for p in m['pairs']}


def _floats(root):
    m = read_manifest(root)
    return {p['name']: np.load(osp.join(root, 'lr_float', f'{p["name"]}.npy')) for p in m['pairs']}


def _teacher_hr_png(net, lq_hwc):
    lq = torch.from_numpy(np.ascontiguousarray(lq_hwc)).permute(2, 0, 1)[None].float()
    return (network_hr(net, lq)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _check_same_pairs_as_random(rand, control, method, net_type):
    """A control set: valid, the pair names (and so the patches) of ``random``, its method and HR network named."""
    ma, mb = read_manifest(rand), validate_distilled_set(control, scale=4, check_contents=True)
    assert [p['name'] for p in ma['pairs']] == [p['name'] for p in mb['pairs']]  # same pairs, same names
    assert mb['method'] == method and mb['options']['hr_network']['type'] == net_type
    return mb


def test_random_teacher_hr_is_random_relabelled_by_the_teacher(idc_options, tmp_path, one_thread):
    rand, relabel = str(tmp_path / 'random'), str(tmp_path / 'relabel')
    select_subset(idc_options, rand, method='random', num_pairs=5, seed=7, device='cpu')
    out = select_subset(idc_options, relabel, method='random_teacher_hr', num_pairs=5, seed=7, device='cpu')
    assert out['num_pairs'] == 5
    _check_same_pairs_as_random(rand, relabel, 'random_teacher_hr', 'IMDN')
    fa, fb = _floats(rand), _floats(relabel)
    assert all(np.array_equal(fa[k], fb[k]) for k in fa)  # the same real LR
    net, key = load_hr_network(idc_options, torch.device('cpu'))
    assert key == 't'
    hr_real, hr_teacher = _pngs(rand, 'hr'), _pngs(relabel, 'hr')
    for name, lq in fb.items():
        assert np.abs(hr_teacher[name].astype(int) - _teacher_hr_png(net, lq).astype(int)).max() <= 1, name
        assert np.abs(hr_teacher[name].astype(int) - hr_real[name].astype(int)).mean() > 0.5  # not the real HR


def test_idc_init_is_idc_initial_x_hat_through_the_teacher(idc_options, tmp_path, one_thread):
    model = build_distill_model(IDCModel, idc_options)
    starts = [model.start_unit(i, None) for i in range(model.source.num_instances)]
    total = sum(inst.n_syn for inst in starts if inst.num_real)
    out_dir = str(tmp_path / 'idc_init')
    out = select_subset(idc_options, out_dir, method='idc_init', num_pairs=total, device='cpu')
    assert out['num_pairs'] == total
    m = validate_distilled_set(out_dir, scale=4, check_contents=True)
    floats = _floats(out_dir)
    net = load_hr_network(idc_options, torch.device('cpu'))[0]
    hr = _pngs(out_dir, 'hr')
    for inst in starts:
        for j in range(inst.n_syn):
            name = f'{inst.name}_idcinit{j:04d}'
            np.testing.assert_array_equal(floats[name], inst.x_hat[j].detach().permute(1, 2, 0).numpy())
            assert np.abs(hr[name].astype(int) - _teacher_hr_png(net, floats[name]).astype(int)).max() <= 1
    yx = {p['name']: p['hr_yx'] for p in m['pairs']}
    assert yx[f'{starts[0].name}_idcinit0000'] == list(starts[0].coords[int(starts[0].init_ids[0])])
    with pytest.raises(ValueError, match=rf'idc_init takes IDC\'s size: {total} pairs'):
        select_subset(idc_options, str(tmp_path / 'bad'), method='idc_init', num_pairs=total + 1, device='cpu')


def test_idc_init_like_an_idc_set_takes_that_runs_options(idc_options, tmp_path, one_thread):
    opt = dict(idc_options, path=dict(idc_options['path'], distilled_root=str(tmp_path / 'idc')))
    model = build_distill_model(IDCModel, opt)
    for it in range(1, 7):
        model.optimize_parameters(it)
    pool = dict(idc_options, manual_seed=0, distill={'ratio': 0.5})  # not the IDC run's: taken from the set
    out_dir = str(tmp_path / 'init')
    out = select_subset(pool, out_dir, method='idc_init', like=str(tmp_path / 'idc'), device='cpu')
    idc = read_manifest(str(tmp_path / 'idc'))
    assert out['num_pairs'] == idc['num_pairs']
    init = {p['name'].replace('_idcinit', '_idc'): p['hr_yx'] for p in read_manifest(out_dir)['pairs']}
    assert init == {p['name']: p['init_patch_hr_yx'] for p in idc['pairs']}  # the run's own starting patches


def test_idc_init_like_an_idc_run_on_some_images_starts_from_those_images(idc_options, tmp_path, one_thread):
    meta = tmp_path / 'meta_info.txt'
    meta.write_text('t1.png (288, 288, 3)\nt12.png (240, 240, 3)\n')  # two of the three images, BasicSR's format
    train = dict(idc_options['datasets']['train'], meta_info_file=str(meta))
    opt = dict(
        idc_options, datasets={'train': train}, path=dict(idc_options['path'], distilled_root=str(tmp_path / 'idc')))
    model = build_distill_model(IDCModel, opt)
    for it in range(1, 5):
        model.optimize_parameters(it)
    idc = read_manifest(str(tmp_path / 'idc'))
    assert idc['complete'] and {p['name'].split('_idc')[0] for p in idc['pairs']} == {'t1', 't12'}
    out_dir = str(tmp_path / 'init')
    out = select_subset(idc_options, out_dir, method='idc_init', like=str(tmp_path / 'idc'), device='cpu')
    assert out['num_pairs'] == idc['num_pairs']
    init = {p['name'].replace('_idcinit', '_idc'): p['hr_yx'] for p in read_manifest(out_dir)['pairs']}
    assert init == {p['name']: p['init_patch_hr_yx'] for p in idc['pairs']}


@pytest.mark.parametrize('init', ['psnr_bic', 'psnr_bic_lowest'])
def test_idc_init_follows_an_informative_init(idc_options, init, tmp_path, one_thread):
    from basicsr_distill.selection.pool import idc_initial_picks
    opt = dict(
        idc_options,
        distill=dict(idc_options['distill'], init=init),
        path=dict(idc_options['path'], distilled_root=str(tmp_path / 'idc')))
    model = build_distill_model(IDCModel, opt)
    picks = idc_initial_picks(model.source, opt)
    for i, (ids, x0) in enumerate(picks):
        inst = model.start_unit(i, None)
        assert ids.tolist() == inst.init_ids.tolist()
        torch.testing.assert_close(x0, inst.x_hat.detach())


SRGAN = {'type': 'SRGANGenerator', 'num_feat': 64, 'num_block': 5, 'upscale': 4}


def test_random_generator_hr_is_gsdd_without_inversion_or_matching(idc_options, tmp_path, one_thread):
    opt = dict(
        idc_options,
        network_g=SRGAN,
        path=dict(idc_options['path'], pretrain_network_g=data_path('weights', 'srgan_netG_epoch_4_100.pth')))
    rand, gen = str(tmp_path / 'random'), str(tmp_path / 'gen')
    select_subset(opt, rand, method='random', num_pairs=4, seed=5, device='cpu')
    out = select_subset(opt, gen, method='random_generator_hr', num_pairs=4, seed=5, device='cpu')
    assert out['num_pairs'] == 4
    mb = _check_same_pairs_as_random(rand, gen, 'random_generator_hr', 'SRGANGenerator')
    assert {p['hr_from'] for p in mb['pairs']} == {'network_g'}
    net, key = load_hr_network(opt, torch.device('cpu'), 'random_generator_hr')
    assert key == 'g'
    real_lq, gen_lq, gen_hr = _floats(rand), _floats(gen), _pngs(gen, 'hr')
    for name, lq in real_lq.items():
        hr = network_hr(net, torch.from_numpy(lq).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
        assert np.abs(gen_hr[name].astype(int) - (hr * 255).round().astype(int)).max() <= 1, name  # HR = G(real LR)
        np.testing.assert_allclose(gen_lq[name], bicubic_lr(hr, 4), atol=1e-5)  # LR = bicubic of that HR
        assert np.abs(gen_lq[name] - lq).mean() > 1e-3  # not the real LR


def test_random_generator_hr_takes_the_generator_of_a_gsdd_set(idc_options, tmp_path, one_thread):
    with pytest.raises(ValueError, match='random_generator_hr needs GSDD.s generator: network_g'):
        select_subset(idc_options, str(tmp_path / 'none'), method='random_generator_hr', num_pairs=2, device='cpu')
    gsdd = str(tmp_path / 'gsdd')
    weights = data_path('weights', 'srgan_netG_epoch_4_100.pth')
    writer = DistilledSetWriter(
        gsdd,
        method='gsdd',
        scale=4,
        source={
            'folder': 'hand-made',
            'num_images': 1
        },
        size_control={'ipc': 3},
        options={
            'network_g': SRGAN,
            'path': {
                'pretrain_network_g': weights
            }
        })
    hr = np.random.default_rng(0).random((48, 48, 3)).astype(np.float32)
    writer.write_unit('c0', [{'name': f'c0_gsdd{k:04d}', 'lq': bicubic_lr(hr, 4), 'gt': hr} for k in range(3)])
    writer.finalize()
    out = select_subset(idc_options, str(tmp_path / 'gen'), method='random_generator_hr', like=gsdd, device='cpu')
    m = read_manifest(out['out'])
    assert out['num_pairs'] == 3 and m['options']['hr_weights'] == weights
    with pytest.raises(ValueError, match='random_generator_hr --like takes a GSDD set'):
        select_subset(idc_options, str(tmp_path / 'bad'), method='random_generator_hr', like=out['out'], device='cpu')

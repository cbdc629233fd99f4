"""IDCModel end to end on real images with the real pretrained teacher, through BasicSR's own train_pipeline."""
import json
import logging
import numpy as np
import os
import os.path as osp
import pytest
import shutil
import sys
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import (REPO, basicsr_log, build_distill_model, data_path, run_basicsr_train, straight_and_restarted,
                      tiny_edsr_options, write_option_file)

from basicsr_distill.archs.imdn_arch import IMDN
from basicsr_distill.data.sr_patches import read_rgb
from basicsr_distill.distilled_set import read_manifest, validate_distilled_set
from basicsr_distill.models.idc_model import IDCModel
from basicsr_distill.utils.checkpoint import load_pretrained
from basicsr_distill.utils.options import read_option_file

T = 6  # iterations per instance in these tests


def _images(tmp_path):
    """Two real T91 images and one too small for a 32x32 patch (a real 28x28 crop)."""
    folder = tmp_path / 'hr'
    folder.mkdir()
    for name in ('tt27', 't20'):
        shutil.copy(data_path('data', 'train', 't91', f'{name}.png'), folder / f'{name}.png')
    import cv2
    img = cv2.imread(data_path('data', 'train', 't91', 't1.png'))
    cv2.imwrite(str(folder / 'tiny.png'), img[:28, :28])
    return str(folder)


def _distill_opt(tmp_path, hr_folder, **distill):
    cfg = {
        'ratio': 0.1,
        'init': 'real',
        'iters_per_instance': T,
        'warmup_iters': 2,
        'assign_iters': 3,
        'assign_steps': 2,
        'num_groups': 3,
        'real_batch_size': 16,
        'rlff': {
            'kernel_size': 3,
            'num_channels': 16,
            'patch_size': 4
        },
        'ncfd': {
            'num_freqs': 64,
            'alpha': 0.5,
            'bank_size': 256
        },
        'weights': {
            'ins': 1.0,
            'group': 1.0,
            'pair': 0.1
        },
        'optim': {
            'type': 'Adam',
            'lr': 0.01
        }
    }
    cfg.update(distill)
    return {
        'name': 'idc_test',
        'model_type': 'IDCModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': {
                'name': 'test',
                'type': 'SRInstanceDataset',
                'dataroot_gt': hr_folder,
                'gt_size': 32,
                'stride': 16,
                'io_backend': {
                    'type': 'disk'
                },
                'use_shuffle': False,
                'num_worker_per_gpu': 0,
                'batch_size_per_gpu': 1,
                'dataset_enlarge_ratio': 1,
                'prefetch_mode': None
            }
        },
        'network_t': {
            'type': 'IMDN',
            'block_type': 'imdb_ntire22',
            'upscale': 4
        },
        'path': {
            'pretrain_network_t': osp.join(REPO, 'weights', 'imdn_baseline.pth'),
            'strict_load_t': True,
            'ignore_resume_networks': ['network_t'],
            'distilled_root': str(tmp_path / 'distilled'),
            'resume_state': None
        },
        'distill': cfg,
        'train': {
            'total_iter': 3 * T,
            'warmup_iter': -1
        },
        'logger': {
            'print_freq': 6,
            'save_checkpoint_freq': 1000,
            'use_tb_logger': False
        },
    }


def _write_yaml(opt, path):
    return write_option_file(opt, path)


def _run_basicsr_train(opt_path, root, monkeypatch, *extra):
    run_basicsr_train(opt_path, root, monkeypatch, *extra)


def _model(opt):
    return build_distill_model(IDCModel, opt)


def test_plugin_option_file_parses_with_basicsr_loader():
    opt = read_option_file(osp.join(REPO, 'options', 'distill', 'idc_demo.yml'))
    assert opt['plugin'] == 'basicsr_distill' and opt['model_type'] == 'IDCModel'


def test_idc_through_basicsr_train_pipeline_then_edsr_trains_on_it(tmp_path, monkeypatch):
    hr_folder = _images(tmp_path)
    opt = _distill_opt(tmp_path, hr_folder)
    _run_basicsr_train(_write_yaml(opt, tmp_path / 'idc.yml'), tmp_path, monkeypatch)

    root = opt['path']['distilled_root']
    manifest = validate_distilled_set(root, scale=4, require_complete=True)
    assert manifest['method'] == 'idc' and manifest['size_control'] == {'r': 0.1}
    assert manifest['source']['num_images'] == 3 and sorted(manifest['units_finished']) == ['t20', 'tiny', 'tt27']
    # n = max(1, round(r * N)) per image, with N the number of 8x8 LR patches at stride 4 (border covered)
    expected = {}
    for name in ('tt27', 't20'):
        h, w = (np.array(read_rgb(osp.join(hr_folder, f'{name}.png')).shape[:2]) // 4)
        n_real = len(range(0, h - 8 + 1, 4)) + ((h - 8) % 4 > 0)
        n_real *= len(range(0, w - 8 + 1, 4)) + ((w - 8) % 4 > 0)
        expected[name] = max(1, round(0.1 * n_real))
    counts = {}
    for pair in manifest['pairs']:
        counts[pair['instance']] = counts.get(pair['instance'], 0) + 1
        assert pair['hr_shape'][:2] == [32, 32] and pair['lr_shape'][:2] == [8, 8]
    assert counts == expected  # 'tiny' is smaller than one patch: no pair
    # HR of each pair is the teacher applied to the float LR
    teacher = load_pretrained(IMDN(block_type='imdb_ntire22'), opt['path']['pretrain_network_t']).eval()
    name = manifest['pairs'][0]['name']
    lq = np.load(osp.join(root, 'lr_float', f'{name}.npy'))
    with torch.no_grad():
        sr = teacher(torch.from_numpy(lq).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    hr_png = read_rgb(osp.join(root, 'hr', f'{name}.png'))
    assert np.abs(hr_png - sr).max() <= 0.5 / 255 + 1e-6

    # a few EDSR iterations on the distilled set: through BasicSR's PairedImageDataset and ours
    for dataset in ({
            'type': 'PairedImageDataset',
            'dataroot_gt': f'{root}/hr',
            'dataroot_lq': f'{root}/lr',
            'meta_info_file': f'{root}/meta_info.txt',
            'filename_tmpl': '{}'
    }, {
            'type': 'DistilledPairedDataset',
            'dataroot': root,
            'lq_source': 'float'
    }):
        name = f'edsr_{dataset["type"]}'
        train_opt = tiny_edsr_options(name, dataset, gt_size=16, iters=3)
        _run_basicsr_train(_write_yaml(train_opt, tmp_path / f'{name}.yml'), tmp_path, monkeypatch)
        assert osp.isfile(tmp_path / 'experiments' / name / 'models' / 'net_g_latest.pth')

    # and BasicSR's test loop measures it on the bundled Set5 with the project's test option file
    from basicsr.test import test_pipeline
    test_opt = read_option_file(osp.join(REPO, 'options', 'test', 'EDSR', 'test_EDSR_x4_demo.yml'))
    test_opt = json.loads(json.dumps(test_opt))  # plain dicts for yaml.safe_dump
    test_opt.pop('plugin')
    test_opt['num_gpu'] = 0
    test_opt['network_g'].update(num_feat=8, num_block=1)
    test_opt['path']['pretrain_network_g'] = str(tmp_path / 'experiments' / name / 'models' / 'net_g_latest.pth')
    for key in ('dataroot_gt', 'dataroot_lq'):
        test_opt['datasets']['test_1'][key] = osp.join(REPO, test_opt['datasets']['test_1'][key])
    monkeypatch.setattr(sys, 'argv', ['basicsr/test.py', '-opt', _write_yaml(test_opt, tmp_path / 'test.yml')])
    with basicsr_log(logging.INFO) as stream:
        test_pipeline(str(tmp_path))
    assert 'Validation Set5' in stream.getvalue() and '# psnr' in stream.getvalue()


def test_written_instances_are_never_recomputed(tmp_path, monkeypatch):
    hr_folder = _images(tmp_path)
    opt = _distill_opt(tmp_path, hr_folder)
    _run_basicsr_train(_write_yaml(opt, tmp_path / 'idc.yml'), tmp_path, monkeypatch)
    root = opt['path']['distilled_root']
    before = {f: os.stat(osp.join(root, 'hr', f)).st_mtime_ns for f in os.listdir(osp.join(root, 'hr'))}
    updated = read_manifest(root)['updated']
    # a restart (a new experiment, same output folder) skips every written instance
    opt['name'] = 'idc_test_restart'
    _run_basicsr_train(_write_yaml(opt, tmp_path / 'idc2.yml'), tmp_path, monkeypatch)
    after = {f: os.stat(osp.join(root, 'hr', f)).st_mtime_ns for f in os.listdir(osp.join(root, 'hr'))}
    assert before == after and read_manifest(root)['updated'] == updated
    # a different configuration into the same folder is refused, naming the manifest
    opt['distill']['ratio'] = 0.2
    with pytest.raises(ValueError, match='distill.json'):
        _model(opt)


def test_resume_inside_an_instance_gives_the_same_pairs(tmp_path):
    hr_folder = _images(tmp_path)
    # stop inside the instance (after iteration 4, past an assignment round)
    straight_and_restarted(
        _model, _distill_opt(tmp_path / 'a', hr_folder), _distill_opt(tmp_path / 'b', hr_folder), total=T, stop=4)
    name = read_manifest(str(tmp_path / 'a' / 'distilled'))['pairs'][0]['name']
    a = np.load(tmp_path / 'a' / 'distilled' / 'lr_float' / f'{name}.npy')
    b = np.load(tmp_path / 'b' / 'distilled' / 'lr_float' / f'{name}.npy')
    assert np.array_equal(a, b)


def test_swinir_teacher_at_a_named_layer(tmp_path):
    from basicsr.archs.swinir_arch import SwinIR
    net_opt = {
        'upscale': 4,
        'in_chans': 3,
        'img_size': 8,
        'window_size': 4,
        'img_range': 1.,
        'depths': [1],
        'embed_dim': 12,
        'num_heads': [2],
        'mlp_ratio': 2,
        'upsampler': 'pixelshuffle',
        'resi_connection': '1conv'
    }
    weights = tmp_path / 'swinir_tiny.pth'
    torch.save({'params': SwinIR(**net_opt).state_dict()}, weights)
    opt = _distill_opt(tmp_path, _images(tmp_path), feature_layer='conv_after_body')
    opt['network_t'] = dict(net_opt, type='SwinIR')
    opt['path']['pretrain_network_t'] = str(weights)
    model = _model(opt)
    for it in range(1, T + 1):
        model.optimize_parameters(it)
    manifest = read_manifest(opt['path']['distilled_root'])
    assert manifest['units_finished'] == ['t20'] and manifest['pairs'][0]['hr_shape'][:2] == [32, 32]


@pytest.mark.parametrize('change, match', [
    ({
        'ratio': 0
    }, r'distill.ratio'),
    ({
        'ratio': 1.5
    }, r'distill.ratio'),
    ({
        'warmup': 3
    }, r'unknown option distill.warmup'),
    ({
        'warmup_iters': 5,
        'assign_iters': 5
    }, r'iters_per_instance'),
])
def test_bad_options_name_the_option(tmp_path, change, match):
    opt = _distill_opt(tmp_path, _images(tmp_path), **change)
    with pytest.raises(ValueError, match=match):
        _model(opt)


def test_too_small_total_iter_is_refused(tmp_path):
    opt = _distill_opt(tmp_path, _images(tmp_path))
    opt['train']['total_iter'] = 2 * T
    with pytest.raises(ValueError, match=r'train.total_iter=12 is too small: 3 images x'):
        _model(opt)


def test_auto_resume_on_cpu_after_a_crash_gives_the_uninterrupted_set(tmp_path, monkeypatch, one_thread):
    hr_folder = _images(tmp_path)
    monkeypatch.chdir(tmp_path)  # BasicSR's --auto_resume looks for experiments/<name> in the current directory
    straight = _distill_opt(tmp_path / 'a', hr_folder)
    _run_basicsr_train(_write_yaml(straight, tmp_path / 'a.yml'), tmp_path, monkeypatch)

    crashed = _distill_opt(tmp_path / 'b', hr_folder)
    crashed['name'] = 'idc_crash'
    crashed['logger']['save_checkpoint_freq'] = 7  # states at 7 and 14 (step 2 of the third instance, tt27)
    opt_path = _write_yaml(crashed, tmp_path / 'b.yml')
    original = IDCModel.optimize_parameters

    def crash_at_16(self, current_iter):
        if current_iter == 16:
            raise RuntimeError('simulated crash')
        return original(self, current_iter)

    monkeypatch.setattr(IDCModel, 'optimize_parameters', crash_at_16)
    with pytest.raises(RuntimeError, match='simulated crash'):
        _run_basicsr_train(opt_path, tmp_path, monkeypatch)
    assert read_manifest(crashed['path']['distilled_root'])['units_finished'] == ['t20', 'tiny']
    monkeypatch.setattr(IDCModel, 'optimize_parameters', original)
    _run_basicsr_train(opt_path, tmp_path, monkeypatch, '--auto_resume')  # resumes from 14.state, on the CPU

    a = read_manifest(straight['path']['distilled_root'])
    b = read_manifest(crashed['path']['distilled_root'])
    assert b['complete'] and [p['name'] for p in a['pairs']] == [p['name'] for p in b['pairs']]
    for pair in a['pairs']:
        for sub, ext in (('lr_float', 'npy'), ('hr', 'png'), ('lr', 'png')):
            with open(osp.join(straight['path']['distilled_root'], sub, f'{pair["name"]}.{ext}'), 'rb') as fa, \
                    open(osp.join(crashed['path']['distilled_root'], sub, f'{pair["name"]}.{ext}'), 'rb') as fb:
                assert fa.read() == fb.read(), pair['name']

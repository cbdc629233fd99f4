"""MinimaxDiffusionModel: the three stages end to end through BasicSR, persisted stages, resume inside stage 2."""
import os
import os.path as osp
import pytest
import shutil
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import (build_distill_model, data_path, run_basicsr_train, straight_and_restarted, tiny_edsr_options,
                      write_option_file)

from basicsr_distill.distilled_set import read_manifest, validate_distilled_set
from basicsr_distill.models.minimax_diffusion_model import MinimaxDiffusionModel


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def _opt(tmp_path, finetune_iters=3):
    hr = tmp_path / 'hr'
    if not hr.exists():
        hr.mkdir(parents=True)
        for name in ('tt1.png', 'tt2.png', 'tt3.png'):
            shutil.copy(data_path('data', 'train', 't91', name), hr / name)
    return {
        'name': 'minimax_test',
        'model_type': 'MinimaxDiffusionModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': {
                'name': 'stages',
                'type': 'DistillStageDataset',
                'length': 10,
                'use_shuffle': False,
                'num_worker_per_gpu': 0,
                'batch_size_per_gpu': 1,
                'dataset_enlarge_ratio': 1,
                'prefetch_mode': None,
                'dataroot_gt': str(hr),
                'gt_size': 64,
                'stride': 64
            }
        },
        'path': {
            'distilled_root': str(tmp_path / 'distilled'),
            'resume_state': None
        },
        'distill': {
            'stage1': {
                'threshold': 'median',
                'extractor': {
                    'type': 'color_gradient'
                },
                'k': 2,
                'seed': 0
            },
            'dit': {
                'config': 'tiny'
            },
            'vae': {
                'config': 'tiny'
            },
            'finetune': {
                'iters': finetune_iters,
                'batch_size': 2,
                'ema_decay': 0.9
            },
            'sample': {
                'images_per_class': 2,
                'steps': 2,
                'guidance_scale': 4.0,
                'seed': 0
            },
        },
        'train': {
            'total_iter': 1 + finetune_iters + 2,
            'warmup_iter': -1
        },
        'logger': {
            'print_freq': 1,
            'save_checkpoint_freq': 1000,
            'use_tb_logger': False
        },
    }


def _run(opt, tmp_path, monkeypatch, name):
    run_basicsr_train(write_option_file(dict(opt, name=name), tmp_path / f'{name}.yml'), tmp_path, monkeypatch)


def _model(opt):
    return build_distill_model(MinimaxDiffusionModel, opt)


def test_three_stages_through_basicsr_then_a_rerun_skips_them_and_edsr_trains(tmp_path, monkeypatch):
    opt = _opt(tmp_path)
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
    a, b = _opt(tmp_path / 'a', 4), _opt(tmp_path / 'b', 4)
    straight, restarted = straight_and_restarted(_model, a, b, total=5, stop=3)
    ta = torch.load(straight.stage2_path, weights_only=True)
    tb = torch.load(restarted.stage2_path, weights_only=True)
    assert ta['trainable'].keys() == tb['trainable'].keys()
    for name in ta['trainable']:
        assert torch.equal(ta['trainable'][name], tb['trainable'][name]), name
        assert torch.equal(ta['ema'][name], tb['ema'][name]), name


def test_missing_local_dit_names_the_option(tmp_path):
    opt = _opt(tmp_path)
    opt['distill']['dit'] = {'pretrained': str(tmp_path / 'no_dit')}
    with pytest.raises(FileNotFoundError, match='distill.dit.pretrained'):
        _model(opt)


def test_too_small_total_iter_is_refused(tmp_path):
    opt = _opt(tmp_path)
    opt['train']['total_iter'] = 3
    with pytest.raises(ValueError, match='train.total_iter=3 is too small'):
        _model(opt)

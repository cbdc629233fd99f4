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
from conftest import IDC_T as T
from conftest import (REPO, basicsr_log, build_distill_model, data_path, idc_distill_opt, idc_images, run_basicsr_train,
                      straight_and_restarted, tiny_edsr_options, write_option_file)

from basicsr_distill.archs.imdn_arch import IMDN
from basicsr_distill.distilled_set import read_manifest, validate_distilled_set
from basicsr_distill.models.idc_model import IDCModel
from basicsr_distill.utils.checkpoint import load_pretrained
from basicsr_distill.utils.image_io import read_rgb
from basicsr_distill.utils.options import read_option_file


def _model(opt):
    return build_distill_model(IDCModel, opt)


def test_plugin_option_file_parses_with_basicsr_loader():
    opt = read_option_file(osp.join(REPO, 'options', 'distill', 'idc_demo.yml'))
    assert opt['plugin'] == 'basicsr_distill' and opt['model_type'] == 'IDCModel'


def test_idc_through_basicsr_train_pipeline_then_edsr_trains_on_it(tmp_path, monkeypatch):
    hr_folder = idc_images(tmp_path)
    opt = idc_distill_opt(tmp_path, hr_folder)
    run_basicsr_train(write_option_file(opt, tmp_path / 'idc.yml'), tmp_path, monkeypatch)

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
        run_basicsr_train(write_option_file(train_opt, tmp_path / f'{name}.yml'), tmp_path, monkeypatch)
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
    monkeypatch.setattr(sys, 'argv', ['basicsr/test.py', '-opt', write_option_file(test_opt, tmp_path / 'test.yml')])
    with basicsr_log(logging.INFO) as stream:
        test_pipeline(str(tmp_path))
    assert 'Validation Set5' in stream.getvalue() and '# psnr' in stream.getvalue()


def test_written_instances_are_never_recomputed(tmp_path, monkeypatch):
    hr_folder = idc_images(tmp_path)
    opt = idc_distill_opt(tmp_path, hr_folder)
    run_basicsr_train(write_option_file(opt, tmp_path / 'idc.yml'), tmp_path, monkeypatch)
    root = opt['path']['distilled_root']
    before = {f: os.stat(osp.join(root, 'hr', f)).st_mtime_ns for f in os.listdir(osp.join(root, 'hr'))}
    updated = read_manifest(root)['updated']
    # a restart (a new experiment, same output folder) skips every written instance
    opt['name'] = 'idc_test_restart'
    run_basicsr_train(write_option_file(opt, tmp_path / 'idc2.yml'), tmp_path, monkeypatch)
    after = {f: os.stat(osp.join(root, 'hr', f)).st_mtime_ns for f in os.listdir(osp.join(root, 'hr'))}
    assert before == after and read_manifest(root)['updated'] == updated
    # a different configuration into the same folder is refused, naming the manifest
    opt['distill']['ratio'] = 0.2
    with pytest.raises(ValueError, match='distill.json'):
        _model(opt)


def test_resume_inside_an_instance_gives_the_same_pairs(tmp_path):
    hr_folder = idc_images(tmp_path)
    # stop inside the instance (after iteration 4, past an assignment round)
    straight_and_restarted(
        _model, idc_distill_opt(tmp_path / 'a', hr_folder), idc_distill_opt(tmp_path / 'b', hr_folder), total=T, stop=4)
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
    opt = idc_distill_opt(tmp_path, idc_images(tmp_path), feature_layer='conv_after_body')
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
    opt = idc_distill_opt(tmp_path, idc_images(tmp_path), **change)
    with pytest.raises(ValueError, match=match):
        _model(opt)


def test_too_small_total_iter_is_refused(tmp_path):
    opt = idc_distill_opt(tmp_path, idc_images(tmp_path))
    opt['train']['total_iter'] = 2 * T
    with pytest.raises(ValueError, match=r'train.total_iter=12 is too small: 3 images x'):
        _model(opt)


def test_auto_resume_on_cpu_after_a_crash_gives_the_uninterrupted_set(tmp_path, monkeypatch, one_thread):
    hr_folder = idc_images(tmp_path)
    monkeypatch.chdir(tmp_path)  # BasicSR's --auto_resume looks for experiments/<name> in the current directory
    straight = idc_distill_opt(tmp_path / 'a', hr_folder)
    run_basicsr_train(write_option_file(straight, tmp_path / 'a.yml'), tmp_path, monkeypatch)

    crashed = idc_distill_opt(tmp_path / 'b', hr_folder)
    crashed['name'] = 'idc_crash'
    crashed['logger']['save_checkpoint_freq'] = 7  # states at 7 and 14 (step 2 of the third instance, tt27)
    opt_path = write_option_file(crashed, tmp_path / 'b.yml')
    original = IDCModel.optimize_parameters

    def crash_at_16(self, current_iter):
        if current_iter == 16:
            raise RuntimeError('simulated crash')
        return original(self, current_iter)

    monkeypatch.setattr(IDCModel, 'optimize_parameters', crash_at_16)
    with pytest.raises(RuntimeError, match='simulated crash'):
        run_basicsr_train(opt_path, tmp_path, monkeypatch)
    assert read_manifest(crashed['path']['distilled_root'])['units_finished'] == ['t20', 'tiny']
    monkeypatch.setattr(IDCModel, 'optimize_parameters', original)
    run_basicsr_train(opt_path, tmp_path, monkeypatch, '--auto_resume')  # resumes from 14.state, on the CPU

    a = read_manifest(straight['path']['distilled_root'])
    b = read_manifest(crashed['path']['distilled_root'])
    assert b['complete'] and [p['name'] for p in a['pairs']] == [p['name'] for p in b['pairs']]
    for pair in a['pairs']:
        for sub, ext in (('lr_float', 'npy'), ('hr', 'png'), ('lr', 'png')):
            with open(osp.join(straight['path']['distilled_root'], sub, f'{pair["name"]}.{ext}'), 'rb') as fa, \
                    open(osp.join(crashed['path']['distilled_root'], sub, f'{pair["name"]}.{ext}'), 'rb') as fb:
                assert fa.read() == fb.read(), pair['name']


# Algorithm 1's schedule and wiring, on the first instance t20 (78x78 HR -> 19x19 LR): 8x8 LR patches at stride 4
# with the border covered give 4 x 4 = N = 16 real patches, n = max(1, round(0.1 * 16)) = 2 synthetic ones; IMDN's
# features keep the 8x8 LR size, RLFF patches of p = 4 cut each into 2 x 2 local patches: P_s = 2 * 4 = 8.
T_SCHEDULE, WARMUP, ASSIGN_ITERS, ASSIGN_STEPS = 14, 3, 10, 3
ROUNDS = {4: 1, 7: 2, 11: 3}  # warmup + 1 + round((j - 1) * 10 / 3): 3 + 1 + 0, 3 + 1 + 3, 3 + 1 + 7
ASSIGNED_AFTER_ROUND = {1: 3, 2: 5, 3: 8}  # round(P_s * j / S): round(8 / 3), round(16 / 3), 8


def _schedule_opt(tmp_path, hr_folder, total=T_SCHEDULE, **distill):
    cfg = dict(iters_per_instance=total, warmup_iters=WARMUP, assign_iters=ASSIGN_ITERS, assign_steps=ASSIGN_STEPS)
    cfg.update(distill)
    opt = idc_distill_opt(tmp_path, hr_folder, **cfg)
    opt['train']['total_iter'] = 3 * cfg['iters_per_instance']
    return opt


# (T, warmup_iters, assign_iters, assign_steps) -> [(step, round j)], by hand
SCHEDULES = [
    ((T_SCHEDULE, WARMUP, ASSIGN_ITERS, ASSIGN_STEPS), sorted(ROUNDS.items())),
    ((T, 2, 3, 2), [(3, 1), (5, 2)]),  # idc_distill_opt's schedule: 2 + 1 + 0, 2 + 1 + round(1.5) = 2 + 1 + 2
    ((20000, 2000, 4000, 10), [(2001 + 400 * (j - 1), j) for j in range(1, 11)]),  # IDC_DEFAULTS: 2001, ..., 5601
    ((8, 7, 0, 1), [(8, 1)]),  # no assignment span: all at once, on the first step after the warm-up
]


@pytest.mark.parametrize('schedule, rounds', SCHEDULES)
def test_assignment_rounds_at_the_documented_steps(tmp_path, schedule, rounds):
    total, warmup, assign_iters, assign_steps = schedule
    opt = _schedule_opt(
        tmp_path,
        idc_images(tmp_path),
        total=total,
        warmup_iters=warmup,
        assign_iters=assign_iters,
        assign_steps=assign_steps)
    model = _model(opt)
    assert [(step, model._assign_round(step)) for step in range(1, total + 1) if model._assign_round(step)] == rounds


def test_algorithm_1_warm_up_then_progressive_assignment(tmp_path):
    """No L_group / L_pair in the warm-up; rounds at the documented steps assign round(P_s j / S) local patches, each
    within its group's quota and paired with a real local patch of its group; every patch is assigned after the last
    round, and a patch keeps its group, and its pair (the default: pairs fixed when assigned), once assigned."""
    opt = _schedule_opt(tmp_path, idc_images(tmp_path))
    model = _model(opt)
    w = opt['distill']['weights']
    inst, seen = None, []
    for step in range(1, T_SCHEDULE + 1):
        model.optimize_parameters(step)
        inst = model.inst or inst  # the instance is dropped from the model when written, at step T
        log = dict(model.log_dict)
        if step <= WARMUP:
            assert sorted(log) == ['l_ins', 'l_total'], step
            assert log['l_total'] == pytest.approx(w['ins'] * log['l_ins'], rel=1e-6)
        else:
            assert sorted(log) == ['l_group', 'l_ins', 'l_pair', 'l_total'], step
            assert log['l_group'] > 0 and log['l_pair'] > 0, step
            assert log['l_total'] == pytest.approx(
                w['ins'] * log['l_ins'] + w['group'] * log['l_group'] + w['pair'] * log['l_pair'], rel=1e-5)
        seen.append((inst.assigned.clone(), inst.pair_index.clone()))
    assert (inst.num_real, inst.n_syn, inst.patches_per_image, inst.num_syn_patches) == (16, 2, 4, 8)
    # the number assigned after each step: 0 in the warm-up, then the round's target from its step on
    expected, count = [], 0
    for step in range(1, T_SCHEDULE + 1):
        count = ASSIGNED_AFTER_ROUND.get(ROUNDS.get(step), count)
        expected.append(count)
    assert [int((a >= 0).sum()) for a, _ in seen] == expected == [0, 0, 0, 3, 3, 3, 5, 5, 5, 5, 8, 8, 8, 8]
    for (before, pair_before), (after, pair_after) in zip(seen, seen[1:]):
        kept = before >= 0
        assert torch.equal(after[kept], before[kept]) and torch.equal(pair_after[kept], pair_before[kept])
    assigned, pairs = seen[-1]
    assert bool((assigned >= 0).all())
    assert torch.equal(torch.bincount(assigned, minlength=inst.num_groups), inst.quotas) and int(inst.quotas.sum()) == 8
    assert torch.equal(inst.labels_real[pairs], assigned)  # every pair is a real local patch of the same group
    manifest = read_manifest(opt['path']['distilled_root'])
    assert manifest['units_finished'] == ['t20'] and len(manifest['pairs']) == 2


@pytest.mark.parametrize('init', ['real', 'noise'])
def test_x_hat_moves_and_l_ins_falls(tmp_path, init):
    """30 steps of Algorithm 1 at lr 0.01 (warm-up 10, assignment over 10). F = B: every step uses the whole
    frequency bank, so the logged L_ins is a function of x_hat alone, not of a fresh draw. Measured: L_ins at step 30
    is 0.62 (real init: 0.0263 -> 0.0163) and 0.61 (noise: 0.0905 -> 0.0548) times L_ins at step 1 (asserted: below
    0.8); the largest pixel change is 0.090 (real) and 0.29 (noise) (asserted: above 0.02)."""
    steps = 30
    opt = _schedule_opt(
        tmp_path,
        idc_images(tmp_path),
        total=steps,
        init=init,
        warmup_iters=10,
        assign_iters=10,
        assign_steps=2,
        ncfd={
            'num_freqs': 256,
            'alpha': 0.5,
            'bank_size': 256
        },
        optim={
            'type': 'Adam',
            'lr': 0.01
        })
    model = _model(opt)
    inst = model.start_unit(0, None)
    x0 = inst.x_hat.detach().clone()
    real = model.source.load_instance(0)['lq']
    if init == 'real':  # x_hat starts as n distinct real patches of the image
        assert torch.equal(x0, real[inst.init_ids]) and len(set(inst.init_ids.tolist())) == 2
    else:  # uniform noise in [0, 1], no real patch
        assert bool((inst.init_ids == -1).all()) and 0 <= x0.min() and x0.max() <= 1
        assert (x0[:, None] - real[None]).abs().flatten(2).amax(2).min() > 0.5
    model.unit = inst  # optimize_parameters goes on with this instance
    l_ins = []
    for step in range(1, steps + 1):
        model.optimize_parameters(step)
        l_ins.append(model.log_dict['l_ins'])
    assert model.inst is None  # written at step T
    assert l_ins[-1] < 0.8 * l_ins[0], l_ins
    x_hat = inst.x_hat.detach()
    assert (x_hat - x0).abs().max() > 0.02 and 0 <= x_hat.min() and x_hat.max() <= 1
    # the written LR side is the final x_hat
    name = read_manifest(opt['path']['distilled_root'])['pairs'][0]['name']
    lq = np.load(osp.join(opt['path']['distilled_root'], 'lr_float', f'{name}.npy'))
    assert np.array_equal(lq, x_hat[0].permute(1, 2, 0).numpy())


def test_changed_source_image_recomputes_its_instance_or_is_refused_under_resume(tmp_path):
    """distill.json records each instance's source-image SHA-256: an image replaced after its instance was written is
    computed again on a rerun (the others kept); under --auto_resume, past its iterations, it is refused, naming it."""
    from basicsr_distill.distilled_set import file_sha256
    hr_folder = idc_images(tmp_path)
    opt = idc_distill_opt(tmp_path, hr_folder)
    root = opt['path']['distilled_root']
    model = _model(opt)
    for it in range(1, 3 * T + 1):
        model.optimize_parameters(it)
    manifest = read_manifest(root)
    assert manifest['complete'] and manifest['units_finished'] == ['t20', 'tiny', 'tt27']
    t20, tt27 = osp.join(hr_folder, 't20.png'), osp.join(hr_folder, 'tt27.png')
    assert manifest['unit_sources']['t20'] == {t20: file_sha256(t20)}
    kept = {f: os.stat(osp.join(root, 'hr', f)).st_mtime_ns for f in os.listdir(osp.join(root, 'hr')) if 'tt27' in f}

    shutil.copy(data_path('data', 'train', 't91', 't5.png'), t20)  # the user replaces an input image
    resumed = dict(opt, path=dict(opt['path'], resume_state=str(tmp_path / 'training_states' / f'{3 * T}.state')))
    with pytest.raises(ValueError) as err:
        _model(resumed)
    assert f"unit 't20': {t20} changed (SHA-256" in str(err.value) and 'Rerun without --auto_resume' in str(err.value)
    assert read_manifest(root) == manifest  # nothing changed

    with basicsr_log() as log:
        model = _model(opt)
    assert f'{t20} changed' in log.getvalue() and 'computed again' in log.getvalue()
    assert model.writer.recomputed_units == ['t20'] and read_manifest(root)['complete'] is False
    for it in range(1, T + 1):
        model.optimize_parameters(it)
    manifest = read_manifest(root)
    assert manifest['complete'] and manifest['unit_sources']['t20'] == {t20: file_sha256(t20)}
    assert all(p['source_image'] == t20 for p in manifest['pairs'] if p['unit'] == 't20')
    assert kept == {f: os.stat(osp.join(root, 'hr', f)).st_mtime_ns for f in kept}  # tt27 untouched
    assert tt27 in manifest['unit_sources']['tt27']

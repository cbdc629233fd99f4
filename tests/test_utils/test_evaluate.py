"""Tests of evaluate_network and scripts/evaluate.py: the bundled IMDN on the bundled Set5 (PSNR / SSIM as evaluate_sr,
NIQE measured), LPIPS unavailable / stubbed, the training-set size, the train-log wall time, the CLI writing JSON."""
import json
import os.path as osp
import pytest
import runpy
import shutil
import sys
import types

import basicsr_distill  # noqa: F401  (must precede basicsr / torchvision)

# isort: split

import cv2
import numpy as np
import torch
from conftest import BUNDLED, REPO, NearestUp, limited_threads, write_option_file
from torch import nn

from basicsr_distill.archs.imdn_arch import IMDN
from basicsr_distill.distilled_set import dataset_size
from basicsr_distill.utils import sr_metrics
from basicsr_distill.utils.checkpoint import load_pretrained
from basicsr_distill.utils.sr_eval import evaluate_sr
from basicsr_distill.utils.sr_metrics import evaluate_network, load_lpips, parse_test_set, parse_train_time

SET5_HR = osp.join(BUNDLED, 'Set5', 'HR')
SET5_LR = osp.join(BUNDLED, 'Set5', 'LR_bicubic', 'X4')
IMDN_WEIGHTS = osp.join(REPO, 'weights', 'imdn_baseline.pth')
SCRIPT = osp.join(REPO, 'scripts', 'evaluate.py')
# NIQE of the IMDN outputs, measured with this pipeline (CPU, 1 and 2 threads: 7.0756 / 7.0774). NIQE reads the
# 8-bit output, so a few pixels rounding the other way (thread count, BLAS) move it by ~1e-3: tolerance 0.02.
IMDN_SET5_NIQE = 7.077


class MustNotRun(nn.Module):

    def forward(self, x):
        raise AssertionError('the network must not run')


@pytest.fixture(scope='module', autouse=True)
def _threads():
    with limited_threads(2):
        yield


@pytest.fixture(scope='module')
def imdn():
    return load_pretrained(IMDN(block_type='imdb_ntire22'), IMDN_WEIGHTS)


@pytest.fixture(scope='module')
def set5_result(imdn):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, 'lpips', None)  # `import lpips` fails even where it is installed
        return evaluate_network(imdn, [('Set5', SET5_HR, SET5_LR)], scale=4)


def _write_images(folder, names, size=(40, 48), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return str(folder)


def test_imdn_set5_psnr_ssim_niqe(set5_result):
    res = set5_result['test_sets']['Set5']
    assert abs(res['psnr'] - 32.2468) < 1e-3 and abs(res['ssim'] - 0.8959) < 1e-3  # = evaluate_sr's (test_sr_eval)
    assert res['num_images'] == 5 and res['hr'] == SET5_HR and res['lr'] == SET5_LR
    assert sorted(res['per_image']) == ['baby.png', 'bird.png', 'butterfly.png', 'head.png', 'woman.png']
    niqe = [v['niqe'] for v in res['per_image'].values()]
    assert all(np.isfinite(v) and v > 0 for v in niqe)
    assert res['niqe'] == pytest.approx(np.mean(niqe)) and res['niqe'] == pytest.approx(IMDN_SET5_NIQE, abs=0.02)
    assert set5_result['scale'] == 4 and set5_result['crop_border'] == 4 and set5_result['test_y_channel']
    assert set5_result['metrics'] == ['psnr', 'ssim', 'niqe', 'lpips']


def test_lpips_unavailable_reported(set5_result):
    res = set5_result['test_sets']['Set5']
    assert res['lpips'] is None and all(v['lpips'] is None for v in res['per_image'].values())
    message = set5_result['unavailable']['lpips']
    for part in ('cannot be imported', 'pip install lpips==0.1.4', 'alexnet-owt-7be5be79.pth',
                 '$TORCH_HOME/hub/checkpoints/', 'weights/v0.1/alex.pth'):
        assert part in message


def test_load_lpips_checks_local_weights(tmp_path, monkeypatch):
    """A stand-in lpips package: missing linear weights, then missing AlexNet weights, then both present."""
    package = tmp_path / 'lpips'
    package.mkdir()
    built = []

    class FakeLPIPS(nn.Module):

        def __init__(self, **kwargs):
            super().__init__()
            built.append(kwargs)

    fake = types.ModuleType('lpips')
    fake.__file__ = str(package / '__init__.py')
    fake.LPIPS = FakeLPIPS
    monkeypatch.setitem(sys.modules, 'lpips', fake)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'torch_home' / 'hub'))  # $TORCH_HOME/hub

    net, message = load_lpips()
    assert net is None and 'alex.pth' in message and 'missing' in message and 'pip install lpips==0.1.4' in message
    (package / 'weights' / 'v0.1').mkdir(parents=True)
    (package / 'weights' / 'v0.1' / 'alex.pth').write_bytes(b'')
    net, message = load_lpips()
    checkpoints = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    assert net is None and 'AlexNet' in message and str(checkpoints / 'alexnet-owt-7be5be79.pth') in message
    checkpoints.mkdir(parents=True)
    (checkpoints / 'alexnet-owt-7be5be79.pth').write_bytes(b'')
    net, message = load_lpips()
    assert isinstance(net, FakeLPIPS) and message is None and not net.training
    assert built == [{'net': 'alex', 'version': '0.1', 'verbose': False}]


def test_lpips_with_given_network(tmp_path):
    """The LPIPS network gets RGB in [-1, 1] with the border shaved; values and means are reported."""
    hr_dir = _write_images(tmp_path / 'HR', ['a.png', 'b.png'])
    calls = []

    def stub(sr, gt):
        calls.append((sr.shape, float(sr.min()), float(sr.max()), gt.shape))
        return (sr - gt).abs().mean().reshape(1, 1, 1, 1)

    res = evaluate_network(NearestUp(2), {'tiny': hr_dir}, scale=2, metrics=['psnr', 'lpips'], lpips_net=stub)
    assert res['unavailable'] == {} and res['metrics'] == ['psnr', 'lpips']
    tiny = res['test_sets']['tiny']
    assert tiny['lr'] is None and 'ssim' not in tiny and 'niqe' not in tiny
    assert [c[0] for c in calls] == [(1, 3, 36, 44)] * 2 and [c[3] for c in calls] == [(1, 3, 36, 44)] * 2
    assert all(-1 <= c[1] < c[2] <= 1 for c in calls)
    values = [v['lpips'] for v in tiny['per_image'].values()]
    assert all(v > 0 for v in values) and tiny['lpips'] == pytest.approx(np.mean(values))


def test_evaluate_sr_extra_metrics(tmp_path):
    hr_dir = _write_images(tmp_path / 'HR', ['a.png'])
    seen = []
    res = evaluate_sr(NearestUp(2), hr_dir, scale=2, extra_metrics={'max': lambda sr, gt: seen.append(sr) or 7.})
    assert res['max'] == 7. and res['per_image']['a.png']['max'] == 7. and list(res)[-1] == 'per_image'
    assert seen[0].dtype == np.uint8 and seen[0].shape == (40, 48, 3)
    with pytest.raises(ValueError, match='reserved'):
        evaluate_sr(NearestUp(2), hr_dir, scale=2, extra_metrics={'psnr': lambda sr, gt: 0.})


@pytest.mark.filterwarnings('ignore::RuntimeWarning')
def test_niqe_errors(tmp_path, monkeypatch):
    hr_dir = _write_images(tmp_path / 'HR', ['small.png'], size=(100, 100))
    with pytest.raises(ValueError, match=r'niqe of ".*small\.png": NIQE needs at least two 96 x 96 blocks'):
        evaluate_network(NearestUp(4), {'s': hr_dir}, scale=4, metrics=['niqe'])
    baby = cv2.imread(osp.join(SET5_HR, 'baby.png'))
    with pytest.raises(ValueError, match='at least two'):  # one block: BasicSR's niqe would fail in pinv
        sr_metrics.niqe_of(baby[:104, :104], 4)
    with pytest.raises(ValueError, match='too few textured'):  # flat blocks: NaN features (numpy warns)
        sr_metrics.niqe_of(np.zeros((104, 200, 3), np.uint8), 4)
    assert np.isfinite(sr_metrics.niqe_of(baby[:104, :200], 4))  # two blocks
    missing = str(tmp_path / 'basicsr' / 'metrics' / 'niqe_pris_params.npz')
    monkeypatch.setattr(sr_metrics, 'niqe_params_path', lambda: missing)
    with pytest.raises(FileNotFoundError, match='niqe_pris_params.npz.*reinstall basicsr==1.4.2'):
        evaluate_network(MustNotRun(), {'s': hr_dir}, scale=4, metrics=['psnr', 'niqe'])
    assert evaluate_network(NearestUp(4), {'s': hr_dir}, scale=4, metrics=['psnr'])['test_sets']['s']['psnr'] > 0


def test_installed_basicsr_has_niqe_params():
    path = sr_metrics.check_niqe_params()
    assert osp.isfile(path) and path.endswith(osp.join('basicsr', 'metrics', 'niqe_pris_params.npz'))


def test_test_set_arguments(tmp_path):
    assert parse_test_set('Set5=/d/HR:/d/LR') == ('Set5', '/d/HR', '/d/LR')
    assert parse_test_set('Set14=/d/HR') == ('Set14', '/d/HR', None)
    for bad in ('/d/HR', '=/d/HR', 'Set5='):
        with pytest.raises(ValueError, match='NAME=HR_DIR'):
            parse_test_set(bad)
    hr_dir = _write_images(tmp_path / 'HR', ['a.png'])
    with pytest.raises(ValueError, match='Duplicate'):
        evaluate_network(MustNotRun(), [('a', hr_dir, None), ('a', hr_dir)], scale=2)
    with pytest.raises(ValueError, match='fid'):
        evaluate_network(MustNotRun(), {'a': hr_dir}, scale=2, metrics=['psnr', 'fid'])
    with pytest.raises(FileNotFoundError, match='nowhere'):  # checked before any set runs
        evaluate_network(MustNotRun(), {'a': hr_dir, 'b': (hr_dir, str(tmp_path / 'nowhere'))}, scale=2)


def test_dataset_size(tmp_path):
    plain = tmp_path / 'plain'
    (plain / 'sub').mkdir(parents=True)
    (plain / 'a.bin').write_bytes(b'x' * 10)
    (plain / 'sub' / 'b.bin').write_bytes(b'x' * 5)
    assert dataset_size(plain) == {'path': str(plain), 'bytes': 15, 'files': 2, 'parts': None}

    distilled = tmp_path / 'distilled'
    for part, sizes in (('hr', (100, 50)), ('lr', (7, )), ('lr_float', (30, ))):
        (distilled / part).mkdir(parents=True)
        for i, size in enumerate(sizes):
            (distilled / part / f'p{i}.png').write_bytes(b'x' * size)
    (distilled / 'hr' / '.distill-tmp-123.png').write_bytes(b'x' * 1000)  # leftover of an interrupted write
    (distilled / 'distill.json').write_text('{}')
    (distilled / 'meta_info.txt').write_text('p0.png (8,8,3)\n')
    assert dataset_size(distilled) == {
        'path': str(distilled),
        'bytes': 187,
        'files': 4,
        'parts': {
            'hr': 150,
            'lr': 7,
            'lr_float': 30
        }
    }
    with pytest.raises(FileNotFoundError, match='nowhere'):
        dataset_size(tmp_path / 'nowhere')


def test_parse_train_time(tmp_path):
    log = tmp_path / 'train.log'
    log.write_text('2026-11-21 10:16:38,860 INFO: [EDSR_..][epoch:  0, iter:   2,000, lr:(1.000e-04,)] ...\n'
                   '2026-11-21 10:16:38,860 INFO: End of training. Time consumed: 0:02:15\n'
                   '2026-11-21 10:16:38,861 INFO: Save the latest model.\n')
    assert parse_train_time(log) == {'path': str(log), 'seconds': 135, 'text': '0:02:15'}
    log.write_text('INFO: End of training. Time consumed: 0:00:01\nINFO: End of training. Time consumed: '
                   '2 days, 1:00:05\n')  # the last line counts; timedelta's day format
    assert parse_train_time(log)['seconds'] == 2 * 86400 + 3605 and parse_train_time(log)['text'] == '2 days, 1:00:05'
    log.write_text('INFO: End of training. Time consumed: 1 day, 0:00:00\n')
    assert parse_train_time(log)['seconds'] == 86400
    log.write_text('INFO: [epoch:  0, iter:   100] still running\n')
    with pytest.raises(ValueError, match='did not finish'):
        parse_train_time(log)
    with pytest.raises(FileNotFoundError):
        parse_train_time(tmp_path / 'missing.log')


def test_cli_writes_json(tmp_path, capsys, monkeypatch):
    """scripts/evaluate.py on one Set5 image (HR only: bicubic LR on the fly) with an option file, size and time."""
    monkeypatch.setitem(sys.modules, 'lpips', None)
    hr_dir = tmp_path / 'one' / 'HR'
    hr_dir.mkdir(parents=True)
    shutil.copy(osp.join(SET5_HR, 'bird.png'), hr_dir)
    network_g = {'type': 'IMDN', 'block_type': 'imdb_ntire22'}
    opt = write_option_file(
        {
            'name': 'imdn_eval',
            'scale': 4,
            'network_g': network_g,
            'path': {
                'pretrain_network_g': IMDN_WEIGHTS
            }
        }, tmp_path / 'imdn.yml')
    train_set = tmp_path / 'train'
    train_set.mkdir()
    (train_set / 'x.png').write_bytes(b'x' * 123)
    log = tmp_path / 'train.log'
    log.write_text('2026-11-21 10:16:38,860 INFO: End of training. Time consumed: 0:01:05\n')
    out = tmp_path / 'out' / 'eval.json'

    main = runpy.run_path(SCRIPT, run_name='evaluate')['main']
    report = main([
        '-opt', opt, '--test_set', f'bird={hr_dir}', '--train_set',
        str(train_set), '--train_log',
        str(log), '--json',
        str(out)
    ])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    bird = saved['evaluation']['test_sets']['bird']
    expected = evaluate_sr(load_pretrained(IMDN(block_type='imdb_ntire22'), IMDN_WEIGHTS), str(hr_dir), scale=4)
    assert bird['psnr'] == pytest.approx(expected['psnr'], abs=1e-9) and bird['lr'] is None
    assert bird['ssim'] == pytest.approx(expected['ssim'], abs=1e-9)
    assert np.isfinite(bird['niqe']) and bird['niqe'] > 0 and bird['lpips'] is None
    assert 'pip install lpips==0.1.4' in saved['evaluation']['unavailable']['lpips']
    assert saved['train_set']['bytes'] == 123 and saved['train_log']['seconds'] == 65
    assert saved['network']['weights'] == IMDN_WEIGHTS and saved['network']['param_key'] == 'auto'
    printed = capsys.readouterr().out
    for part in ('PSNR (dB)', 'NIQE', 'LPIPS', 'n/a', f'{bird["psnr"]:.4f}', 'LPIPS unavailable', '123 bytes',
                 '0:01:05 (65 s)', str(out)):
        assert part in printed

    # the --arch form, PSNR / SSIM only, same numbers
    report = main([
        '--arch', 'IMDN', '--arch-opt', 'block_type=imdb_ntire22', '--weights', IMDN_WEIGHTS, '--test_set',
        f'bird={hr_dir}', '--metrics', 'psnr', 'ssim'
    ])
    bird2 = report['evaluation']['test_sets']['bird']
    assert bird2['psnr'] == bird['psnr'] and set(bird2) == {'hr', 'lr', 'num_images', 'psnr', 'ssim', 'per_image'}
    assert report['evaluation']['unavailable'] == {} and report['train_set'] is None
    with pytest.raises(SystemExit):
        main(['--test_set', f'bird={hr_dir}', '--weights', IMDN_WEIGHTS])  # neither -opt nor --arch
    with pytest.raises(SystemExit):
        main(['--arch', 'IMDN', '--weights', IMDN_WEIGHTS, '--test_set', str(hr_dir)])  # no NAME=
    with pytest.raises(FileNotFoundError, match='nowhere'):  # folders checked before the weights are read
        main(['--arch', 'IMDN', '--weights', str(tmp_path / 'no.pth'), '--test_set', f'x={tmp_path / "nowhere"}'])

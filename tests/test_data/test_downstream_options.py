"""The downstream option files.

Every file under options/train/: it parses with BasicSR's loader, its networks build (and run on a tiny input) and its
training dataset options are accepted by the dataset they name (DistilledPairedDataset: built on a small distilled set
written here; PairedImageDataset, the full-set references: built on a small paired folder written here). A full-set
file trains exactly as its distilled twin. Every file under options/test/: it parses, tests the network_g of its train
files with the weights of the distilled run, reads test sets that exist, and measures Y-channel PSNR / SSIM on a
scale-pixel border. One test file runs end to end through BasicSR's test_pipeline on the real Set5.
"""
import copy
import cv2
import glob
import json
import logging
import numpy as np
import os
import os.path as osp
import pytest
import re
import sys
import torch

import basicsr_distill  # noqa: F401  (compat fixes before basicsr / torchvision)

# isort: split
from conftest import REPO, basicsr_log, data_path, limited_threads, write_option_file

from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.metrics import calculate_psnr
from basicsr.utils import img2tensor, tensor2img
from basicsr.utils.registry import DATASET_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY
from basicsr_distill.data.distilled_paired_dataset import DistilledPairedDataset
from basicsr_distill.distilled_set import DistilledSetWriter
from basicsr_distill.utils.options import read_option_file

TRAIN_ROOT = osp.join(REPO, 'options', 'train')
TEST_ROOT = osp.join(REPO, 'options', 'test')
OPTION_FILES = sorted(glob.glob(osp.join(TRAIN_ROOT, '**', '*.yml'), recursive=True))
TEST_FILES = sorted(glob.glob(osp.join(TEST_ROOT, '**', '*.yml'), recursive=True))
# the networks BasicSR ships that the papers retrain: <folder>/<file stem without train_ / test_ and the data suffix>
NETWORKS = ('EDSR/EDSR_x4', 'RCAN/RCAN_x4', 'SwinIR/SwinIR_x4', 'MSRResNet/MSRResNet_x4', 'RRDBNet/RRDBNet_PSNR_x4',
            'ESRGAN/ESRGAN_x4')
# keys of datasets.train that DistilledPairedDataset reads, those PairedImageDataset reads, and those BasicSR's
# dataloader / sampler read
DISTILLED_KEYS = {
    'dataroot', 'scale', 'phase', 'gt_size', 'use_hflip', 'use_rot', 'io_backend', 'lq_source', 'color', 'mean', 'std'
}
PAIRED_KEYS = {
    'dataroot_gt', 'dataroot_lq', 'meta_info_file', 'filename_tmpl', 'io_backend', 'gt_size', 'use_hflip', 'use_rot',
    'scale', 'phase', 'color', 'mean', 'std'
}
LOADER_KEYS = {
    'name', 'type', 'use_shuffle', 'num_worker_per_gpu', 'batch_size_per_gpu', 'dataset_enlarge_ratio', 'prefetch_mode',
    'pin_memory', 'persistent_workers', 'num_prefetch_queue'
}
# what a full-set file changes in datasets.train: the data source; everything else equals the distilled twin's
DATA_SOURCE_KEYS = {
    'name', 'type', 'dataroot', 'lq_source', 'dataroot_gt', 'dataroot_lq', 'meta_info_file', 'filename_tmpl',
    'io_backend'
}
BIG_NET_PARAMS = 5_000_000  # above this, the forward runs on a copy with fewer blocks (CPU time)
HR_SIZE = 192  # HR side of the training pairs written here: the largest gt_size of the files


def _load(path):
    return read_option_file(path)


def _plain(opt):
    """Plain dicts and lists (BasicSR's loader gives OrderedDicts), for comparisons and yaml.safe_dump."""
    return json.loads(json.dumps(opt))


def _rel(path, root):
    return osp.relpath(path, root)


def _shrunk(net_opt):
    """The network options with one block per stage (same widths, scale and upsampler), for a cheap forward."""
    opt = copy.deepcopy(net_opt)
    if 'num_block' in opt:
        opt['num_block'] = 1
    if 'depths' in opt:
        opt['depths'] = [2] * len(opt['depths'])
    return opt


def _num_params(net_opt):
    """Parameters of the network the options build; built without memory or weight init where the arch allows."""
    try:
        with torch.device('meta'):
            net = build_network(copy.deepcopy(net_opt))
    except RuntimeError:  # archs that read tensor values while building (SwinIR's drop-path schedule)
        net = build_network(copy.deepcopy(net_opt))
    return sum(p.numel() for p in net.parameters())


def _is_full(path):
    return '_full' in osp.basename(path)


def _twin_key(path, prefix):
    """'EDSR/EDSR_x4' for options/train/EDSR/train_EDSR_x4_full.yml and options/test/EDSR/test_EDSR_x4.yml;
    'EDSR/EDSR_x4_demo' for train_EDSR_x4_distilled_demo.yml and test_EDSR_x4_demo.yml."""
    folder = osp.basename(osp.dirname(path))
    stem = osp.splitext(osp.basename(path))[0]
    assert stem.startswith(prefix), f'{path}: the file name must start with {prefix}'
    return f'{folder}/' + re.sub(r'_(distilled|full)(?=_|$)', '', stem[len(prefix):])


def _train_files_of(key):
    """{'distilled': path, 'full': path} of the train files of a network key (those that exist)."""
    found = {}
    for path in OPTION_FILES:
        if _twin_key(path, 'train_') == key:
            kind = 'full' if _is_full(path) else 'distilled'
            assert kind not in found, f'two {kind} train files for {key}'
            found[kind] = path
    return found


def _resolve(dataroot):
    """A dataroot of a test file (relative to the repository root) on this machine: BasicSR's ``datasets/Set5/...``
    and ``datasets/Set14/...`` are the bundled copies (conftest's layout); any other path is under the repository."""
    parts = dataroot.split('/')
    if parts[0] == 'datasets' and len(parts) > 1 and parts[1] in ('Set5', 'Set14'):
        return data_path('data', 'val', *parts[1:])
    return osp.join(REPO, dataroot)


def _bsd_crops(num):
    """``num`` HR_SIZE x HR_SIZE float32 RGB crops of real BSD200 images and their x4 area-downsampled LR."""
    folder = data_path('data', 'train', 'bsd200')
    pairs = []
    for name in sorted(glob.glob(osp.join(folder, '*.png')))[:num]:
        hr = cv2.imread(name, cv2.IMREAD_COLOR)[:HR_SIZE, :HR_SIZE, ::-1].astype(np.float32) / 255.
        lq = cv2.resize(hr, (HR_SIZE // 4, HR_SIZE // 4), interpolation=cv2.INTER_AREA)
        pairs.append((hr, lq))
    return pairs


@pytest.fixture(scope='module')
def distilled_root(tmp_path_factory):
    """Two x4 pairs of BSD200 crops (HR) and their area-downsampled LR, as a distilled set."""
    root = str(tmp_path_factory.mktemp('options') / 'distilled_x4')
    folder = data_path('data', 'train', 'bsd200')
    writer = DistilledSetWriter(root, 'test', 4, {'folder': folder, 'num_images': 2}, {'ipc': 1}, {'scale': 4})
    for i, (hr, lq) in enumerate(_bsd_crops(2)):
        writer.write_unit(f'class{i}', [{'name': f'pair{i}', 'lq': lq, 'gt': hr}])
    writer.finalize()
    return root


@pytest.fixture(scope='module')
def paired_root(tmp_path_factory):
    """The same two pairs as 8-bit PNGs in DIV2K sub-image style folders (same names in hr/ and lr/): what BasicSR's
    PairedImageDataset reads in folder mode (meta_info_file ~, filename_tmpl '{}')."""
    root = tmp_path_factory.mktemp('options') / 'paired_x4'
    for sub in ('hr', 'lr'):
        os.makedirs(root / sub)
    for i, (hr, lq) in enumerate(_bsd_crops(2)):
        for sub, img in (('hr', hr), ('lr', lq)):
            cv2.imwrite(str(root / sub / f'{i + 1:04d}_s001.png'), (img[..., ::-1] * 255).round().astype(np.uint8))
    return str(root)


def test_option_files_are_found():
    names = {_rel(p, TRAIN_ROOT) for p in OPTION_FILES}
    tests = {_rel(p, TEST_ROOT) for p in TEST_FILES}
    for key in NETWORKS:
        folder, stem = key.split('/')
        for kind in ('distilled', 'full'):
            assert f'{folder}/train_{stem}_{kind}.yml' in names
        assert f'{folder}/test_{stem}.yml' in tests


@pytest.mark.parametrize('path', OPTION_FILES, ids=lambda p: _rel(p, TRAIN_ROOT))
def test_option_file(path, distilled_root, paired_root):
    with open(path) as f:
        text = f.read()
    assert 'Option files are code' in text and 'Use trusted files only.' in text
    opt = _load(path)
    assert opt['plugin'] == 'basicsr_distill'  # the tag imported the plugin
    assert opt['model_type'] in MODEL_REGISTRY
    assert opt['num_gpu'] == 'auto'
    scale = opt['scale']

    # networks: build, and a tiny forward (on a shrunk copy for the big ones)
    torch.manual_seed(0)
    if _num_params(opt['network_g']) > BIG_NET_PARAMS:
        net_g = build_network(_shrunk(opt['network_g']))
    else:
        net_g = build_network(copy.deepcopy(opt['network_g']))
    with torch.no_grad():
        out = net_g.eval()(torch.rand(1, 3, 16, 16))
    assert tuple(out.shape) == (1, 3, 16 * scale, 16 * scale) and torch.isfinite(out).all()
    train_opt = opt['datasets']['train']
    if 'network_d' in opt:
        assert opt['network_d'].get('input_size', 128) == train_opt['gt_size']  # VGGStyleDiscriminator's input
        net_d = build_network(copy.deepcopy(opt['network_d']))
        with torch.no_grad():
            assert net_d.eval()(torch.rand(1, 3, train_opt['gt_size'], train_opt['gt_size'])).shape == (1, 1)

    # training dataset
    assert train_opt['type'] in DATASET_REGISTRY
    if 'distilled' in osp.basename(path):
        assert train_opt['type'] == 'DistilledPairedDataset'
    if _is_full(path):  # DIV2K sub-images of BasicSR's scripts/data_preparation/extract_subimages.py
        assert train_opt['type'] == 'PairedImageDataset'
        assert train_opt['dataroot_gt'] == 'datasets/DIV2K/DIV2K_train_HR_sub'
        assert train_opt['dataroot_lq'] == f'datasets/DIV2K/DIV2K_train_LR_bicubic/X{scale}_sub'
        assert train_opt['filename_tmpl'] == '{}' and train_opt['io_backend'] == {'type': 'disk'}
        # not in the pip package: BasicSR's basicsr/data/meta_info/ is only in its repository
        assert train_opt['meta_info_file'] is None
    gt_size = train_opt['gt_size']
    assert gt_size <= HR_SIZE and gt_size % scale == 0
    if train_opt['type'] == 'DistilledPairedDataset':
        unknown = set(train_opt) - DISTILLED_KEYS - LOADER_KEYS
        assert not unknown, f'keys DistilledPairedDataset does not read: {sorted(unknown)}'
        assert train_opt['lq_source'] == 'float' and train_opt['io_backend'] == {'type': 'disk'}
        dataset_opt = dict(copy.deepcopy(train_opt), dataroot=distilled_root, phase='train', scale=scale)
        dataset = build_dataset(dataset_opt)
        assert isinstance(dataset, DistilledPairedDataset)
    elif train_opt['type'] == 'PairedImageDataset':
        unknown = set(train_opt) - PAIRED_KEYS - LOADER_KEYS
        assert not unknown, f'keys PairedImageDataset does not read: {sorted(unknown)}'
        # folder mode on the small paired folder (it has no meta file: meta_info_file ~)
        dataset_opt = dict(
            copy.deepcopy(train_opt),
            dataroot_gt=osp.join(paired_root, 'hr'),
            dataroot_lq=osp.join(paired_root, 'lr'),
            meta_info_file=None,
            phase='train',
            scale=scale)
        dataset = build_dataset(dataset_opt)
    else:
        pytest.fail(f'no check for datasets.train of type {train_opt["type"]}')
    assert len(dataset) == 2
    item = dataset[0]
    assert tuple(item['gt'].shape) == (3, gt_size, gt_size)
    assert tuple(item['lq'].shape) == (3, gt_size // scale, gt_size // scale)

    # pretrained generator: an experiment of the same kind (the ESRGANs start from their PSNR-oriented RRDBNet)
    pretrain = opt['path'].get('pretrain_network_g')
    if pretrain is not None and not pretrain.startswith('experiments/pretrained_models/'):
        match = re.fullmatch(r'experiments/([^/]+)/models/net_g_(latest|\d+)\.pth', pretrain)
        assert match, pretrain
        same_kind = [p for p in OPTION_FILES if _is_full(p) == _is_full(path) and p != path]
        assert match.group(1) in {_load(p)['name'] for p in same_kind}, f'{pretrain}: no such run among the files'

    # validation: Set5, Y-channel PSNR and SSIM on a scale-pixel border
    if 'val' in opt['datasets']:
        assert opt['datasets']['val']['type'] in DATASET_REGISTRY
    for metric in ('psnr', 'ssim'):
        if 'distilled' in osp.basename(path) or metric in opt['val']['metrics']:
            assert opt['val']['metrics'][metric]['crop_border'] == scale
            assert opt['val']['metrics'][metric]['test_y_channel'] is True


@pytest.mark.parametrize('path', [p for p in OPTION_FILES if _is_full(p)], ids=lambda p: _rel(p, TRAIN_ROOT))
def test_full_file_trains_as_its_distilled_twin(path):
    """A full-set reference differs from its distilled twin only in the data source and the run name."""
    twins = _train_files_of(_twin_key(path, 'train_'))
    assert 'distilled' in twins, f'{path}: no *_distilled.yml twin'
    full, dist = _plain(_load(path)), _plain(_load(twins['distilled']))
    assert full['name'] != dist['name']
    for key in set(full) | set(dist):
        if key not in ('name', 'datasets', 'path'):
            assert full.get(key) == dist.get(key), f'{key} differs from {_rel(twins["distilled"], TRAIN_ROOT)}'
    assert full['datasets']['val'] == dist['datasets']['val']
    for key in set(full['datasets']['train']) | set(dist['datasets']['train']):
        if key not in DATA_SOURCE_KEYS:
            assert full['datasets']['train'].get(key) == dist['datasets']['train'].get(key), f'datasets.train.{key}'
    for key in set(full['path']) | set(dist['path']):
        if key != 'pretrain_network_g':
            assert full['path'].get(key) == dist['path'].get(key), f'path.{key}'
    assert (full['path'].get('pretrain_network_g') is None) == (dist['path'].get('pretrain_network_g') is None)


@pytest.mark.parametrize('path', TEST_FILES, ids=lambda p: _rel(p, TEST_ROOT))
def test_test_option_file(path):
    with open(path) as f:
        text = f.read()
    assert 'Option files are code' in text and 'Use trusted files only.' in text
    opt = _load(path)
    assert opt['plugin'] == 'basicsr_distill'
    assert opt['model_type'] in MODEL_REGISTRY
    assert opt['num_gpu'] == 'auto'
    scale = opt['scale']

    # the network and weights of its train files: network_g as trained (distilled and full-set), the distilled run's
    # last checkpoint, the EMA copy where the run keeps one
    key = _twin_key(path, 'test_')
    twins = _train_files_of(key)
    assert 'distilled' in twins, f'{path}: no train file options/train/{key} (_distilled)'
    if key in NETWORKS:
        assert set(twins) == {'distilled', 'full'}
    for train_path in twins.values():
        train = _plain(_load(train_path))
        assert _plain(opt['network_g']) == train['network_g'], f'network_g differs from {train_path}'
        assert (opt['model_type'], scale) == (train['model_type'], train['scale'])
    dist = _load(twins['distilled'])
    assert opt['path']['pretrain_network_g'] == f'experiments/{dist["name"]}/models/net_g_latest.pth'
    assert opt['path']['param_key_g'] == ('params_ema' if dist['train'].get('ema_decay', 0) > 0 else 'params')
    assert opt['path'].get('strict_load_g', True) is True
    if 'full' in twins:  # the header's command for the full-set reference names that run's checkpoint
        full_name = _load(twins['full'])['name']
        assert f'path:pretrain_network_g=experiments/{full_name}/models/net_g_latest.pth' in text

    # test sets: they exist here and BasicSR's dataset reads them (x4 LR <-> HR)
    names = []
    for phase, dataset_opt in opt['datasets'].items():
        assert re.fullmatch(r'test_\d+', phase)
        assert dataset_opt['type'] in DATASET_REGISTRY
        names.append(dataset_opt['name'])
        if dataset_opt['type'] == 'PairedImageDataset':
            unknown = set(dataset_opt) - PAIRED_KEYS - LOADER_KEYS
            assert not unknown, f'keys PairedImageDataset does not read: {sorted(unknown)}'
        dataset_opt = dict(copy.deepcopy(dataset_opt), phase='test', scale=scale)
        for root in ('dataroot_gt', 'dataroot_lq'):
            dataset_opt[root] = _resolve(dataset_opt[root])
        dataset = build_dataset(dataset_opt)
        assert len(dataset) == len(os.listdir(dataset_opt['dataroot_gt'])) > 0
        item = dataset[0]
        assert tuple(item['gt'].shape[1:]) == tuple(s * scale for s in item['lq'].shape[1:])
    if key in NETWORKS:
        assert names == ['Set5', 'Set14']

    # metrics: Y-channel PSNR and SSIM on a scale-pixel border (NIQE: the same border, on Y by default)
    metrics = opt['val']['metrics']
    assert {'psnr', 'ssim'} <= set(metrics)
    for name, metric in metrics.items():
        assert metric['type'] in METRIC_REGISTRY
        assert metric['crop_border'] == scale
        if metric['type'] in ('calculate_psnr', 'calculate_ssim'):
            assert metric['test_y_channel'] is True


def test_test_file_runs_in_basicsr_test_pipeline(tmp_path, monkeypatch):
    """options/test/EDSR/test_EDSR_x4.yml through BasicSR's test_pipeline on the real Set5, with a shrunk EDSR and
    random weights: the PSNR it logs is the one computed here from the EMA weights (param_key_g) of the checkpoint."""
    test_opt = _plain(_load(osp.join(TEST_ROOT, 'EDSR', 'test_EDSR_x4.yml')))
    test_opt.pop('plugin')  # write_option_file writes the tag again
    test_opt['num_gpu'] = 0
    test_opt['network_g'].update(num_feat=8, num_block=1)
    set5 = test_opt['datasets'].pop('test_1')
    test_opt['datasets'] = {
        'test_1': dict(set5, dataroot_gt=_resolve(set5['dataroot_gt']), dataroot_lq=_resolve(set5['dataroot_lq']))
    }
    assert set5['name'] == 'Set5' and test_opt['path']['param_key_g'] == 'params_ema'
    torch.manual_seed(0)
    net = build_network(copy.deepcopy(test_opt['network_g'])).eval()
    decoy = build_network(copy.deepcopy(test_opt['network_g']))  # 'params': must not be the weights tested
    weights = tmp_path / 'net_g_latest.pth'
    torch.save({'params': decoy.state_dict(), 'params_ema': net.state_dict()}, weights)
    test_opt['path']['pretrain_network_g'] = str(weights)
    monkeypatch.setattr(sys, 'argv', ['basicsr/test.py', '-opt', write_option_file(test_opt, tmp_path / 'test.yml')])

    from basicsr.test import test_pipeline
    with basicsr_log(logging.INFO) as stream, limited_threads(2):
        test_pipeline(str(tmp_path))
    log = stream.getvalue()
    assert 'Validation Set5' in log
    psnr = float(re.search(r'# psnr: (\S+)', log).group(1))
    ssim = float(re.search(r'# ssim: (\S+)', log).group(1))
    assert np.isfinite(psnr) and 5 < psnr < 50 and 0 < ssim < 1

    # the same numbers, computed here: Y channel, 4-pixel border, HR cropped to 4 x LR, the EMA weights
    values = []
    gt_root, lq_root = test_opt['datasets']['test_1']['dataroot_gt'], test_opt['datasets']['test_1']['dataroot_lq']
    for name in sorted(os.listdir(gt_root)):
        stem = osp.splitext(name)[0]
        gt = cv2.imread(osp.join(gt_root, name), cv2.IMREAD_COLOR)
        lq = cv2.imread(osp.join(lq_root, set5['filename_tmpl'].format(stem) + '.png'), cv2.IMREAD_COLOR).astype(
            np.float32) / 255.
        with torch.no_grad(), limited_threads(2):
            sr = tensor2img(net(img2tensor(lq, bgr2rgb=True, float32=True)[None]))
        gt = gt[:lq.shape[0] * 4, :lq.shape[1] * 4]
        values.append(calculate_psnr(sr, gt, crop_border=4, test_y_channel=True))
    assert abs(psnr - np.mean(values)) < 1e-3
    assert len(values) == 5 and osp.isdir(tmp_path / 'results' / test_opt['name'])

"""Every option file under options/train/: it parses with BasicSR's loader, its networks build (and run on a tiny
input) and its training dataset options are accepted by the dataset they name (DistilledPairedDataset: built on a
small distilled set written here)."""
import copy
import glob
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
import yaml

import basicsr_distill  # noqa: F401  (compat fixes before basicsr / torchvision)
from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY
from basicsr_distill.data.distilled_paired_dataset import DistilledPairedDataset
from basicsr_distill.distilled_set import DistilledSetWriter
from conftest import REPO, shared_path  # noqa: E402

OPTION_FILES = sorted(glob.glob(osp.join(REPO, 'options', 'train', '**', '*.yml'), recursive=True))
# keys of datasets.train that DistilledPairedDataset reads, and those BasicSR's dataloader / sampler read
DISTILLED_KEYS = {
    'dataroot', 'scale', 'phase', 'gt_size', 'use_hflip', 'use_rot', 'io_backend', 'lq_source', 'color', 'mean', 'std'
}
LOADER_KEYS = {
    'name', 'type', 'use_shuffle', 'num_worker_per_gpu', 'batch_size_per_gpu', 'dataset_enlarge_ratio', 'prefetch_mode',
    'pin_memory', 'persistent_workers', 'num_prefetch_queue'
}
BIG_NET_PARAMS = 5_000_000  # above this, the forward runs on a copy with fewer blocks (CPU time)
HR_SIZE = 192  # HR side of the pairs of the small distilled set: the largest gt_size of the files


def _load(path):
    with open(path) as f:
        return yaml.load(f, Loader=ordered_yaml()[0])


def _shrunk(net_opt):
    """The network options with one block per stage (same widths, scale and upsampler), for a cheap forward."""
    opt = copy.deepcopy(net_opt)
    if 'num_block' in opt:
        opt['num_block'] = 1
    if 'depths' in opt:
        opt['depths'] = [2] * len(opt['depths'])
    return opt


@pytest.fixture(scope='module')
def distilled_root(tmp_path_factory):
    """Two x4 pairs of HR_SIZE x HR_SIZE crops of BSD200 images (HR) and their area-downsampled LR."""
    root = str(tmp_path_factory.mktemp('options') / 'distilled_x4')
    folder = shared_path('data', 'train', 'bsd200')
    writer = DistilledSetWriter(root, 'test', 4, {'folder': folder, 'num_images': 2}, {'ipc': 1}, {'scale': 4})
    for i, name in enumerate(sorted(glob.glob(osp.join(folder, '*.png')))[:2]):
        hr = cv2.imread(name, cv2.IMREAD_COLOR)[:HR_SIZE, :HR_SIZE, ::-1].astype(np.float32) / 255.
        lq = cv2.resize(hr, (HR_SIZE // 4, HR_SIZE // 4), interpolation=cv2.INTER_AREA)
        writer.write_unit(f'class{i}', [{'name': f'pair{i}', 'lq': lq, 'gt': hr}])
    writer.finalize()
    return root


def test_option_files_are_found():
    names = {osp.relpath(p, osp.join(REPO, 'options', 'train')) for p in OPTION_FILES}
    for expected in ('RRDBNet/train_RRDBNet_PSNR_x4_distilled.yml', 'ESRGAN/train_ESRGAN_x4_distilled.yml',
                     'MSRResNet/train_MSRResNet_x4_distilled.yml', 'SwinIR/train_SwinIR_x4_distilled.yml'):
        assert expected in names


@pytest.mark.parametrize('path', OPTION_FILES, ids=lambda p: osp.relpath(p, osp.join(REPO, 'options', 'train')))
def test_option_file(path, distilled_root):
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
    net_g = build_network(copy.deepcopy(opt['network_g']))
    num_params = sum(p.numel() for p in net_g.parameters())
    if num_params > BIG_NET_PARAMS:
        net_g = build_network(_shrunk(opt['network_g']))
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
    if train_opt['type'] == 'DistilledPairedDataset':
        unknown = set(train_opt) - DISTILLED_KEYS - LOADER_KEYS
        assert not unknown, f'keys DistilledPairedDataset does not read: {sorted(unknown)}'
        assert train_opt['lq_source'] == 'float' and train_opt['io_backend'] == {'type': 'disk'}
        assert train_opt['gt_size'] <= HR_SIZE
        dataset_opt = dict(copy.deepcopy(train_opt), dataroot=distilled_root, phase='train', scale=scale)
        dataset = build_dataset(dataset_opt)
        assert isinstance(dataset, DistilledPairedDataset) and len(dataset) == 2
        item = dataset[0]
        gt_size = train_opt['gt_size']
        assert tuple(item['gt'].shape) == (3, gt_size, gt_size)
        assert tuple(item['lq'].shape) == (3, gt_size // scale, gt_size // scale)

    # validation: Set5, Y-channel PSNR and SSIM on a scale-pixel border
    if 'val' in opt['datasets']:
        assert opt['datasets']['val']['type'] in DATASET_REGISTRY
    for metric in ('psnr', 'ssim'):
        if 'distilled' in osp.basename(path) or metric in opt['val']['metrics']:
            assert opt['val']['metrics'][metric]['crop_border'] == scale
            assert opt['val']['metrics'][metric]['test_y_channel'] is True

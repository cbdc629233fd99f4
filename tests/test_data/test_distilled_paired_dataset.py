"""Tests of DistilledPairedDataset (disk float/png and lmdb backends) and scripts/make_distilled_lmdb.py."""
import cv2
import importlib.util
import logging
import numpy as np
import os
import pytest
import shutil
import torch
from os import path as osp

import basicsr_distill  # noqa: F401  (compat fixes before basicsr / torchvision)

# isort: split
from conftest import DATA

from basicsr.data import build_dataset
from basicsr_distill.data.distilled_paired_dataset import DistilledPairedDataset
from basicsr_distill.distilled_set import DistilledSetWriter, load_pair, make_distilled_lmdb, pair_paths

T91 = osp.join(DATA, 'data', 'train', 't91')
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCALE = 2
SIZES = {'a0': (40, 48), 'a1': (48, 40), 'b0': (64, 56)}  # HR sizes


def _pair(name, index, hr_hw, rng):
    img = cv2.imread(osp.join(T91, f't{index}.png'), cv2.IMREAD_COLOR)[..., ::-1]
    h, w = hr_hw
    gt = img[:h, :w].astype(np.float32) / 255.
    lq = cv2.resize(gt, (w // SCALE, h // SCALE), interpolation=cv2.INTER_AREA)
    lq = np.clip(lq + rng.normal(0, 0.02, lq.shape), 0, 1).astype(np.float32)  # float, unique values
    return {'name': name, 'lq': lq, 'gt': gt, 'info': {'source_image': f't{index}.png'}}


@pytest.fixture(scope='module')
def distilled_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('distilled') / 'idc_t91_x2')
    rng = np.random.default_rng(0)
    writer = DistilledSetWriter(root, 'idc', SCALE, {'folder': T91, 'num_images': 91}, {'ipc': 2}, {'scale': SCALE})
    writer.write_unit('class_a', [_pair('a0', 1, SIZES['a0'], rng), _pair('a1', 2, SIZES['a1'], rng)])
    writer.write_unit('class_b', [_pair('b0', 3, SIZES['b0'], rng)])
    writer.finalize()
    make_distilled_lmdb(root)
    return root


@pytest.fixture
def broken_root(distilled_root, tmp_path):
    root = str(tmp_path / 'copy')
    shutil.copytree(distilled_root, root, ignore=shutil.ignore_patterns('*.lmdb'))
    return root


def make_opt(root, **kwargs):
    opt = {
        'name': 'distilled',
        'type': 'DistilledPairedDataset',
        'dataroot': root,
        'scale': SCALE,
        'phase': 'val',
        'io_backend': {
            'type': 'disk'
        }
    }
    opt.update(kwargs)
    return opt


def to_hwc(tensor):
    return tensor.permute(1, 2, 0).numpy()


@pytest.mark.parametrize('lq_source', ['float', 'png', None])
def test_disk_val_reads_whole_pairs(distilled_root, lq_source):
    opt = make_opt(distilled_root)
    if lq_source is not None:
        opt['lq_source'] = lq_source
    dataset = build_dataset(opt)
    assert isinstance(dataset, DistilledPairedDataset) and len(dataset) == 3
    for i, name in enumerate(['a0', 'a1', 'b0']):
        item = dataset[i]
        lq_ref, gt_ref = load_pair(distilled_root, name, lq_source=lq_source or 'float')
        assert item['lq'].dtype == torch.float32 and tuple(item['gt'].shape) == (3, *SIZES[name])
        assert np.array_equal(to_hwc(item['lq']), lq_ref)  # exact: float copy, or PNG/255
        assert np.array_equal(to_hwc(item['gt']), gt_ref)
        assert item['gt_path'] == pair_paths(distilled_root, name)['hr']
        assert item['lq_path'] == pair_paths(distilled_root, name)['lr_float' if lq_source != 'png' else 'lr']
    if lq_source == 'png':
        assert not np.array_equal(to_hwc(dataset[0]['lq']), load_pair(distilled_root, 'a0')[0])


def _find_window(full, patch):
    """Return (top, left, hflip, vflip, rot90) such that augmenting full[top:, left:] gives patch, else None."""
    p = patch.shape[0]
    for hflip in (False, True):
        for vflip in (False, True):
            for rot in (False, True):
                undone = patch.transpose(1, 0, 2) if rot else patch  # invert: transpose, then flips
                undone = undone[::-1] if vflip else undone
                undone = undone[:, ::-1] if hflip else undone
                for top in range(full.shape[0] - p + 1):
                    for left in range(full.shape[1] - p + 1):
                        if np.array_equal(full[top:top + p, left:left + p], undone):
                            return top, left, hflip, vflip, rot
    return None


def _augmented(img, hflip, vflip, rot):
    img = img[:, ::-1] if hflip else img
    img = img[::-1] if vflip else img
    return img.transpose(1, 0, 2) if rot else img


@pytest.mark.parametrize('backend', ['disk', 'lmdb'])
def test_train_crops_flips_rotations(distilled_root, backend):
    dataset = build_dataset(
        make_opt(distilled_root, phase='train', gt_size=16, use_hflip=True, use_rot=True, io_backend={'type': backend}))
    full = {n: load_pair(distilled_root, n, lq_source='float' if backend == 'disk' else 'png') for n in SIZES}
    seen = set()
    for k in range(24):
        i = k % 3
        name = ['a0', 'a1', 'b0'][i]
        item = dataset[i]
        assert tuple(item['lq'].shape) == (3, 8, 8) and tuple(item['gt'].shape) == (3, 16, 16)
        found = _find_window(full[name][0], to_hwc(item['lq']))
        assert found is not None, 'the LQ patch is not an augmented window of the LQ image'
        top, left, hflip, vflip, rot = found
        gt_window = full[name][1][top * SCALE:top * SCALE + 16, left * SCALE:left * SCALE + 16]
        assert np.array_equal(to_hwc(item['gt']), _augmented(gt_window, hflip, vflip, rot))
        seen.add((hflip, vflip, rot))
    assert len(seen) >= 3  # flips and rotations do happen


def test_lmdb_backend_reads_pngs(distilled_root, caplog):
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        dataset = build_dataset(make_opt(distilled_root, io_backend={'type': 'lmdb'}, lq_source='float'))
    assert dataset.lq_source == 'png' and 'lq_source png instead of float' in caplog.text
    for i, name in enumerate(['a0', 'a1', 'b0']):
        item = dataset[i]
        lq_ref, gt_ref = load_pair(distilled_root, name, lq_source='png')
        assert item['lq_path'] == name and item['gt_path'] == name
        assert np.array_equal(to_hwc(item['lq']), lq_ref) and np.array_equal(to_hwc(item['gt']), gt_ref)
    # worker processes forked after the main process opened the environments through another dataset (BasicSR
    # validates in the main process): each worker opens its own
    train = build_dataset(make_opt(distilled_root, io_backend={'type': 'lmdb'}, phase='train', gt_size=16))
    assert build_dataset(make_opt(distilled_root, io_backend={'type': 'lmdb'}))[0]['lq_path'] == 'a0'
    for _ in range(2):
        loader = torch.utils.data.DataLoader(train, batch_size=3, num_workers=2)
        assert [tuple(b['gt'].shape) for b in loader] == [(3, 3, 16, 16)]


def test_lmdb_of_a_tiny_noisy_set(tmp_path):
    # BasicSR sizes the lmdb map from the first image only, too small for tiny poorly compressible sets
    root = str(tmp_path / 'tiny')
    writer = DistilledSetWriter(root, 'gsdd', 3, {'folder': T91, 'num_images': 1}, {'ipc': 1}, None)
    rng = np.random.default_rng(0)
    writer.write_unit(0, [{
        'name': f'n{i}',
        'lq': rng.random((4, 5, 3)),
        'gt': rng.random((12, 15, 3))
    } for i in range(3)])
    writer.finalize()
    make_distilled_lmdb(root)
    item = build_dataset(make_opt(root, scale=3, io_backend={'type': 'lmdb'}))[2]
    assert np.array_equal(to_hwc(item['gt']), load_pair(root, 'n2')[1])


def test_normalisation(distilled_root):
    item = build_dataset(make_opt(distilled_root, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]))[0]
    lq_ref, gt_ref = load_pair(distilled_root, 'a0')
    assert np.allclose(to_hwc(item['lq']), (lq_ref - 0.5) / 0.5, atol=1e-6)
    assert np.allclose(to_hwc(item['gt']), (gt_ref - 0.5) / 0.5, atol=1e-6)


def test_deleted_file_fails_at_construction(broken_root):
    missing = pair_paths(broken_root, 'a1')['hr']
    os.remove(missing)
    with pytest.raises(ValueError, match=missing):
        DistilledPairedDataset(make_opt(broken_root))


def test_wrong_scale_fails_at_construction(distilled_root):
    with pytest.raises(ValueError) as err:
        DistilledPairedDataset(make_opt(distilled_root, scale=4))
    assert osp.join(distilled_root, 'distill.json') in str(err.value)
    assert 'x2' in str(err.value) and 'x4' in str(err.value)


def test_hr_of_wrong_size_names_both_files(broken_root):
    hr_path = pair_paths(broken_root, 'b0')['hr']
    datasets = [DistilledPairedDataset(make_opt(broken_root, phase=phase, gt_size=16)) for phase in ('val', 'train')]
    cv2.imwrite(hr_path, cv2.imread(hr_path)[:-2])
    for dataset in datasets:  # replaced after the datasets were built: found when the pair is loaded
        with pytest.raises(ValueError) as err:
            dataset[2]
        assert hr_path in str(err.value) and pair_paths(broken_root, 'b0')['lr_float'] in str(err.value)
    with pytest.raises(ValueError, match=f'{hr_path}.* is 62x56 pixels, the manifest says 64x56'):
        DistilledPairedDataset(make_opt(broken_root))  # and at construction from the PNG header


def test_bad_options(distilled_root, broken_root):
    with pytest.raises(ValueError, match='multiple of the scale'):
        DistilledPairedDataset(make_opt(distilled_root, phase='train', gt_size=15))
    with pytest.raises(ValueError, match="pair 'a0'.*lower gt_size"):
        DistilledPairedDataset(make_opt(distilled_root, phase='train', gt_size=48))
    with pytest.raises(ValueError, match='lq_source'):
        DistilledPairedDataset(make_opt(distilled_root, lq_source='jpg'))
    with pytest.raises(ValueError, match='io_backend'):
        DistilledPairedDataset(make_opt(distilled_root, io_backend={'type': 'memcached'}))
    with pytest.raises(FileNotFoundError, match='hr.lmdb'):
        DistilledPairedDataset(make_opt(broken_root, io_backend={'type': 'lmdb'}))
    with pytest.raises(FileNotFoundError, match='distill.json'):
        DistilledPairedDataset(make_opt(osp.dirname(distilled_root)))


def test_make_distilled_lmdb_script(broken_root, capsys):
    spec = importlib.util.spec_from_file_location('make_distilled_lmdb',
                                                  osp.join(REPO, 'scripts', 'make_distilled_lmdb.py'))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([broken_root]) == 0
    assert sorted(v for v in os.listdir(broken_root) if v.endswith('.lmdb')) == ['hr.lmdb', 'lr.lmdb']
    assert not [v for v in os.listdir(broken_root) if v.startswith('.distill-tmp-')]
    assert len(DistilledPairedDataset(make_opt(broken_root, io_backend={'type': 'lmdb'}))) == 3
    assert script.main([broken_root]) == 1  # never overwrites
    assert 'already exists' in capsys.readouterr().err

    # a set that grew after the conversion: the lmdb misses a key
    source = {'folder': T91, 'num_images': 91}
    writer = DistilledSetWriter(broken_root, 'idc', SCALE, source, {'ipc': 2}, {'scale': SCALE})
    writer.write_unit('class_c', [_pair('c0', 7, (40, 40), np.random.default_rng(1))])
    with pytest.raises(ValueError, match=r"hr.lmdb has no key 'c0'"):
        DistilledPairedDataset(make_opt(broken_root, io_backend={'type': 'lmdb'}))


@pytest.mark.parametrize('damage', ['one_nan', 'all_inf', 'one_1.5', 'one_negative'])
@pytest.mark.parametrize('phase', ['val', 'train'])
def test_non_finite_or_out_of_range_lr_float_is_refused_when_read(broken_root, damage, phase):
    """An lr_float npy of the right length (header, size and end intact) holding a NaN, infinities or a value outside
    [0, 1] passes the quick start-up check, but is refused when the pair is read, naming the file."""
    path = pair_paths(broken_root, 'a1')['lr_float']
    arr = np.load(path)
    size = osp.getsize(path)
    if damage == 'one_nan':
        arr[3, 4, 1] = np.nan
    elif damage == 'all_inf':
        arr[:] = np.inf
    else:
        arr[3, 4, 1] = 1.5 if damage == 'one_1.5' else -0.25
    np.save(path, arr)
    assert osp.getsize(path) == size
    dataset = DistilledPairedDataset(make_opt(broken_root, phase=phase, gt_size=16))  # verify: quick still builds
    dataset[0], dataset[2]  # the other pairs still load
    with pytest.raises(ValueError, match='must hold finite values in') as err:
        dataset[1]
    assert path in str(err.value)
    assert 'NaN or infinite' in str(err.value)
    with pytest.raises(ValueError, match=path):
        load_pair(broken_root, 'a1')
    assert len(DistilledPairedDataset(make_opt(broken_root, lq_source='png'))[1]['lq']) == 3  # the PNG is intact

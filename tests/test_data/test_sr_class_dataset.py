"""Tests of SRClassFolderDataset (class folders and k-means pseudo-classes for GSDD) on real T91, BSD200 and Set14
images."""
import cv2
import logging
import numpy as np
import os
import pytest
import random
import shutil
import torch
import warnings
from os import path as osp

import basicsr_distill  # noqa: F401  (compat fixes before basicsr / torchvision)

# isort: split
from conftest import data_path

from basicsr.data import build_dataset
from basicsr_distill.data.sr_class_dataset import SRClassFolderDataset, color_gradient_features, kmeans_pseudo_labels
from basicsr_distill.utils.image_io import read_rgb

GT = 32
SCALE = 4
TT = ['tt1.png', 'tt2.png', 'tt3.png', 'tt4.png']  # T91, 'tt' images (165 to 500 px)
NUM_BSD = 3  # BSD200 (481x321 / 321x481)


def _copy(names, src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in names:
        shutil.copy(osp.join(src, name), osp.join(dst, name))


def _bsd_names(num):
    return sorted(os.listdir(data_path('data', 'train', 'bsd200')))[:num]


@pytest.fixture(scope='module')
def class_root(tmp_path_factory):
    """OST-like tree: ``ost/tt`` (4 T91 images) and ``ost/bsd`` (3 BSD200 images)."""
    root = str(tmp_path_factory.mktemp('classes') / 'ost')
    _copy(TT, data_path('data', 'train', 't91'), osp.join(root, 'tt'))
    _copy(_bsd_names(NUM_BSD), data_path('data', 'train', 'bsd200'), osp.join(root, 'bsd'))
    return root


@pytest.fixture(scope='module')
def flat_root(tmp_path_factory):
    """A flat folder ``mixed`` of 6 T91 tt images and 6 BSD200 images."""
    root = str(tmp_path_factory.mktemp('flat') / 'mixed')
    _copy([f'tt{i}.png' for i in range(1, 7)], data_path('data', 'train', 't91'), root)
    _copy(_bsd_names(6), data_path('data', 'train', 'bsd200'), root)
    return root


def make(root, **kwargs):
    opt = {
        'name': 'classes',
        'type': 'SRClassFolderDataset',
        'dataroot_gt': root,
        'gt_size': GT,
        'scale': SCALE,
        'phase': 'train',
        'io_backend': {
            'type': 'disk'
        }
    }
    opt.update(kwargs)
    return build_dataset(opt)


def found_in(crop_chw, path):
    """True if the (3, GT, GT) crop is exactly a GT x GT window of the image ``path`` (searched, not trusted)."""
    img = read_rgb(path)
    crop = np.ascontiguousarray(crop_chw.permute(1, 2, 0).numpy())
    if img.shape[0] < GT or img.shape[1] < GT:
        return False
    res = cv2.matchTemplate(img, crop, cv2.TM_SQDIFF)
    for y, x in zip(*np.nonzero(res <= res.min() + 1e-3)):
        if np.array_equal(img[y:y + GT, x:x + GT], crop):
            return True
    return False


def window(path, top, left):
    return torch.from_numpy(np.ascontiguousarray(read_rgb(path)[top:top + GT, left:left + GT].transpose(2, 0, 1)))


def rng_states():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def assert_rng_states_equal(a, b):
    assert torch.equal(a[0], b[0])
    assert a[1][0] == b[1][0] and np.array_equal(a[1][1], b[1][1]) and a[1][2:] == b[1][2:]
    assert a[2] == b[2]


# ---------------------------------------------------------------------------------------------------------- classes
def test_class_names_order_and_images(class_root):
    dataset = make(class_root)
    assert isinstance(dataset, SRClassFolderDataset)
    assert dataset.num_classes == 2 and dataset.class_names == ['bsd', 'tt']  # sorted folder names
    assert dataset.images_of(0) == [osp.join(class_root, 'bsd', n) for n in _bsd_names(NUM_BSD)]
    assert dataset.images_of(1) == [osp.join(class_root, 'tt', n) for n in TT]
    assert len(dataset) == 2 * 4  # num_classes x the largest class
    assert dataset.class_of(dataset.images_of(1)[2]) == 1

    ordered = make(class_root, classes=['tt', 'bsd'])
    assert ordered.class_names == ['tt', 'bsd'] and ordered.images_of(0) == dataset.images_of(1)
    only = make(class_root, classes=['tt'])
    assert only.class_names == ['tt'] and len(only) == 4
    with pytest.raises(ValueError, match='sky'):
        make(class_root, classes=['tt', 'sky'])
    with pytest.raises(ValueError, match='twice'):
        make(class_root, classes=['tt', 'tt'])
    with pytest.raises(IndexError):
        dataset.images_of(2)
    with pytest.raises(KeyError):
        only.class_of(dataset.images_of(0)[0])


def test_flat_folder_is_one_class(flat_root):
    dataset = make(flat_root)
    assert dataset.class_names == ['mixed'] and dataset.pseudo_label_assignment is None
    assert dataset.images_of(0) == sorted(osp.join(flat_root, n) for n in os.listdir(flat_root))
    assert len(dataset) == 12
    batch = dataset.sample_class_batch(0, 3, torch.Generator().manual_seed(0))
    assert tuple(batch.shape) == (3, 3, GT, GT)


# ---------------------------------------------------------------------------------------------------------- batches
def test_class_batches_come_from_their_class(class_root):
    dataset = make(class_root)
    for c in range(dataset.num_classes):
        batch, info = dataset.sample_class_batch(c, 6, torch.Generator().manual_seed(10 + c), return_info=True)
        assert tuple(batch.shape) == (6, 3, GT, GT) and batch.dtype == torch.float32 and batch.is_contiguous()
        assert batch.min() >= 0 and batch.max() <= 1 and batch.std() > 0
        assert len(info) == 6
        others = [p for k in range(dataset.num_classes) if k != c for p in dataset.images_of(k)]
        for crop, where in zip(batch, info):
            assert where['gt_path'] in dataset.images_of(c)
            assert torch.equal(crop, window(where['gt_path'], where['top'], where['left']))
            # searched independently of the reported position: in the class's images, in no other class's image
            assert any(found_in(crop, p) for p in dataset.images_of(c))
            assert not any(found_in(crop, p) for p in others)


def test_batches_are_seeded_and_leave_global_rng_alone(class_root):
    dataset = make(class_root)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    before = rng_states()
    first = [dataset.sample_class_batch(c, 5, torch.Generator().manual_seed(123), return_info=True) for c in (0, 1)]
    path = dataset.images_of(1)[0]
    crop_a = dataset.random_crop(path, torch.Generator().manual_seed(7))
    fresh = make(class_root)  # cold cache: same crops
    again = [fresh.sample_class_batch(c, 5, torch.Generator().manual_seed(123), return_info=True) for c in (0, 1)]
    crop_b = fresh.random_crop(path, torch.Generator().manual_seed(7))
    items = [dataset[i]['gt'] for i in range(len(dataset))]
    assert_rng_states_equal(before, rng_states())
    for (b1, i1), (b2, i2) in zip(first, again):
        assert torch.equal(b1, b2) and i1 == i2
    assert torch.equal(crop_a, crop_b)
    other = dataset.sample_class_batch(0, 5, torch.Generator().manual_seed(124))
    assert not torch.equal(other, first[0][0])
    # one generator drives a sequence of draws: the sequence is reproduced from the same seed
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    seq1 = [dataset.sample_class_batch(c % 2, 2, g1) for c in range(4)]
    seq2 = [fresh.sample_class_batch(c % 2, 2, g2) for c in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(seq1, seq2))
    assert all(torch.equal(a, fresh[i]['gt']) for i, a in enumerate(items))
    with pytest.raises(TypeError):
        dataset.sample_class_batch(0, 2, None)
    with pytest.raises(ValueError):
        dataset.sample_class_batch(0, 0, g1)
    with pytest.raises(IndexError):
        dataset.sample_class_batch(2, 2, g1)


def test_cache_holds_one_class_decoded_lazily(class_root):
    dataset = make(class_root)
    assert dataset.cached_class is None and dataset.num_cached_images == 0
    dataset.sample_class_batch(1, 1, torch.Generator().manual_seed(0))
    assert dataset.cached_class == 1 and dataset.num_cached_images == 1  # only the image drawn
    dataset.sample_class_batch(1, 32, torch.Generator().manual_seed(0))
    assert dataset.num_cached_images == 4
    dataset.sample_class_batch(0, 1, torch.Generator().manual_seed(0))
    assert dataset.cached_class == 0 and dataset.num_cached_images == 1  # class 1 dropped
    dataset.random_crop(dataset.images_of(1)[3], torch.Generator())
    assert dataset.cached_class == 1 and dataset.num_cached_images == 1

    small = make(class_root, cache_mb=0.01)  # below one image: keeps the last image only, same crops
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(small.sample_class_batch(0, 8, g1), dataset.sample_class_batch(0, 8, g2))
    assert small.num_cached_images == 1


def test_random_crop(class_root):
    dataset = make(class_root)
    path = dataset.images_of(0)[1]
    crop, info = dataset.random_crop(path, torch.Generator().manual_seed(1), return_info=True)
    assert tuple(crop.shape) == (3, GT, GT) and crop.dtype == torch.float32
    assert info['gt_path'] == path and torch.equal(crop, window(path, info['top'], info['left']))
    assert dataset.cached_class == 0
    positions = {
        tuple(dataset.random_crop(path, torch.Generator().manual_seed(s), return_info=True)[1].values())[1:]
        for s in range(6)
    }
    assert len(positions) > 1
    with pytest.raises(KeyError, match='not an image'):
        dataset.random_crop(data_path('data', 'train', 't91', 't1.png'), torch.Generator())


# ------------------------------------------------------------------------------------------------ BasicSR dataloader
def test_getitem_is_class_balanced_and_reproducible(class_root):
    dataset = make(class_root)
    items = [dataset[i] for i in range(len(dataset))]
    assert [it['class'] for it in items] == [0, 1] * 4
    assert [it['class_name'] for it in items] == ['bsd', 'tt'] * 4
    bsd, tt = dataset.images_of(0), dataset.images_of(1)
    assert [it['gt_path'] for it in items[0::2]] == [bsd[0], bsd[1], bsd[2], bsd[0]]  # (idx // C) % n_c
    assert [it['gt_path'] for it in items[1::2]] == tt
    for it in items:
        assert tuple(it['gt'].shape) == (3, GT, GT) and it['gt'].dtype == torch.float32
        assert found_in(it['gt'], it['gt_path'])
    assert not torch.equal(items[0]['gt'], items[6]['gt'])  # same image, other index: another crop
    assert torch.equal(dataset[-1]['gt'], items[-1]['gt'])
    assert torch.equal(make(class_root, seed=0)[3]['gt'], items[3]['gt'])
    assert not torch.equal(make(class_root, seed=1)[3]['gt'], items[3]['gt'])
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False)))
    assert tuple(batch['gt'].shape) == (4, 3, GT, GT) and batch['class'].tolist() == [0, 1, 0, 1]


# ------------------------------------------------------------------------------------------------------ image kinds
def test_grayscale_16bit_and_alpha_images(tmp_path):
    root = str(tmp_path / 'kinds')
    _copy(['bridge.png'], data_path('data', 'val', 'Set14', 'HR'), osp.join(root, 'gray'))
    rgb8 = cv2.imread(data_path('data', 'train', 't91', 'tt1.png'), cv2.IMREAD_COLOR)  # BGR uint8
    os.makedirs(osp.join(root, 'deep'))
    bgra16 = np.concatenate([rgb8, np.full_like(rgb8[..., :1], 200)], 2).astype(np.uint16) * 257
    cv2.imwrite(osp.join(root, 'deep', 'tt1_16bit_alpha.png'), bgra16)
    dataset = make(root)
    assert dataset.class_names == ['deep', 'gray']

    gray = cv2.imread(data_path('data', 'val', 'Set14', 'HR', 'bridge.png'), cv2.IMREAD_UNCHANGED)
    assert gray.ndim == 2
    batch, info = dataset.sample_class_batch(1, 4, torch.Generator().manual_seed(0), return_info=True)
    assert tuple(batch.shape) == (4, 3, GT, GT)
    assert torch.equal(batch[:, 0], batch[:, 1]) and torch.equal(batch[:, 1], batch[:, 2])
    for crop, where in zip(batch, info):
        top, left = where['top'], where['left']
        assert np.array_equal(crop[0].numpy(), gray[top:top + GT, left:left + GT].astype(np.float32) / 255.)

    batch, info = dataset.sample_class_batch(0, 4, torch.Generator().manual_seed(0), return_info=True)
    assert tuple(batch.shape) == (4, 3, GT, GT)  # alpha dropped
    for crop, where in zip(batch, info):
        top, left = where['top'], where['left']
        ref = rgb8[top:top + GT, left:left + GT, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.
        np.testing.assert_allclose(crop.numpy(), ref, rtol=0, atol=1e-6)  # v * 257 / 65535 == v / 255


# ----------------------------------------------------------------------------------------------------------- errors
def test_errors_name_the_folder(tmp_path, class_root):
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='nowhere'):
        make(missing)

    empty_class = str(tmp_path / 'with_empty')
    shutil.copytree(class_root, empty_class)
    os.makedirs(osp.join(empty_class, 'sky'))
    with pytest.raises(FileNotFoundError, match='sky'):
        make(empty_class)
    assert make(empty_class, classes=['bsd', 'tt']).num_classes == 2  # a class left out is not read

    empty_flat = str(tmp_path / 'empty_flat')
    os.makedirs(empty_flat)
    with pytest.raises(FileNotFoundError, match='empty_flat'):
        make(empty_flat)

    small = str(tmp_path / 'small')  # T91 t20 (78x78) and t12 (114x119): smaller than 128
    _copy(['t20.png', 't12.png'], data_path('data', 'train', 't91'), osp.join(small, 'tiny'))
    with pytest.raises(ValueError, match=r'tiny.*0 image\(s\)'):
        make(small, gt_size=128)
    small_flat = str(tmp_path / 'small_flat')
    _copy(['t20.png'], data_path('data', 'train', 't91'), small_flat)
    with pytest.raises(ValueError, match='small_flat'):
        make(small_flat, gt_size=128)

    with pytest.raises(ValueError, match=r"'bsd'.*min_images_per_class is 4"):
        make(class_root, min_images_per_class=4)
    assert make(class_root, min_images_per_class=3).num_classes == 2
    with pytest.raises(ValueError, match='gt_size'):
        make(class_root, gt_size=30)  # not a multiple of scale 4

    broken = str(tmp_path / 'broken')
    _copy(TT[:1], data_path('data', 'train', 't91'), osp.join(broken, 'tt'))
    with open(osp.join(broken, 'tt', 'truncated.png'), 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n not an image')
    with pytest.raises(ValueError, match='truncated.png'):
        make(broken)


def test_small_images_are_skipped_with_a_warning(tmp_path, caplog):
    root = str(tmp_path / 'mixed_sizes')
    _copy(['t20.png', 't1.png'], data_path('data', 'train', 't91'), osp.join(root, 'tt'))  # 78x78, 197x176
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        dataset = make(root, gt_size=96)
    assert dataset.images_of(0) == [osp.join(root, 'tt', 't1.png')]
    assert 'skipped 1 image(s)' in caplog.text and 't20.png' in caplog.text


# ---------------------------------------------------------------------------------------------------- pseudo-labels
def test_color_gradient_features():
    img = read_rgb(data_path('data', 'train', 't91', 'tt1.png'))
    feat = color_gradient_features(img)
    assert feat.shape == (14, ) and feat.dtype == np.float64
    np.testing.assert_allclose(feat[6:].sum(), 1.0)
    side = min(img.shape[0], img.shape[1], 256)
    top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    centre = img[top:top + side, left:left + side].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(feat[:3], centre.mean(0), rtol=1e-12)
    np.testing.assert_allclose(feat[3:6], centre.std(0), rtol=1e-12)
    assert np.array_equal(feat, color_gradient_features(img.copy()))

    gray = read_rgb(data_path('data', 'val', 'Set14', 'HR', 'bridge.png'))
    gfeat = color_gradient_features(gray)
    assert gfeat[0] == gfeat[1] == gfeat[2] and gfeat[3] == gfeat[4] == gfeat[5]
    flat = np.full((40, 50, 3), 0.3, np.float32)
    assert np.array_equal(color_gradient_features(flat)[6:], np.eye(8)[0])  # no gradient: all in the first bin
    with pytest.raises(ValueError):
        color_gradient_features(gray[..., 0])


def test_pseudo_labels_split_a_flat_folder(flat_root):
    pseudo = {'num_classes': 3, 'seed': 0}
    dataset = make(flat_root, pseudo_labels=pseudo)
    paths = sorted(osp.join(flat_root, n) for n in os.listdir(flat_root))
    assert dataset.class_names == ['pseudo0', 'pseudo1', 'pseudo2']
    assert sorted(dataset.pseudo_label_assignment) == paths  # every image assigned
    members = [dataset.images_of(c) for c in range(3)]
    assert all(members) and sorted(p for m in members for p in m) == paths
    for c, m in enumerate(members):
        assert all(dataset.pseudo_label_assignment[p] == f'pseudo{c}' for p in m)
    assert paths[0] in members[0]  # clusters numbered by their first image
    assert len(dataset) == 3 * max(len(m) for m in members)

    again = make(flat_root, pseudo_labels=dict(pseudo))
    assert again.pseudo_label_assignment == dataset.pseudo_label_assignment  # stable for a seed
    picked = make(flat_root, pseudo_labels=dict(pseudo), classes=['pseudo2', 'pseudo0'])
    assert picked.images_of(0) == members[2] and picked.images_of(1) == members[0]
    assert sorted(picked.pseudo_label_assignment) == paths
    one = make(flat_root, pseudo_labels={'num_classes': 1})
    assert one.class_names == ['pseudo0'] and one.images_of(0) == paths
    every = make(flat_root, pseudo_labels={'num_classes': 12})
    assert all(len(every.images_of(c)) == 1 for c in range(12))


def test_pseudo_label_errors(flat_root, class_root):
    with pytest.raises(ValueError, match=r'\[1, 12\]'):
        make(flat_root, pseudo_labels={'num_classes': 13})
    with pytest.raises(ValueError, match='num_classes'):
        make(flat_root, pseudo_labels={'num_classes': 0})
    with pytest.raises(ValueError, match='num_classes'):
        make(flat_root, pseudo_labels={'seed': 0})
    with pytest.raises(ValueError, match='clusters'):
        make(flat_root, pseudo_labels={'num_classes': 2, 'clusters': 3})
    with pytest.raises(ValueError, match='feature'):
        make(flat_root, pseudo_labels={'num_classes': 2, 'feature': 'clip'})
    with pytest.raises(ValueError, match='flat folder'):
        make(class_root, pseudo_labels={'num_classes': 2})
    with pytest.raises(ValueError, match='min_images_per_class'):
        make(flat_root, pseudo_labels={'num_classes': 12}, min_images_per_class=2)

    features = np.array([[0., 0.], [0., 0.], [0., 0.], [1., 1.]])
    assert kmeans_pseudo_labels(features, 2).tolist() == [0, 0, 0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # scikit-learn warns about the duplicated points
        with pytest.raises(ValueError, match='non-empty clusters'):
            kmeans_pseudo_labels(features, 3)

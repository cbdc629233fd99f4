"""Tests of basicsr_distill.distilled_set: writer round trip, resume, crash safety, validation, BasicSR reading."""
import cv2
import json
import logging
import numpy as np
import os
import pytest
from os import path as osp

import basicsr_distill  # noqa: F401  (compat fixes before basicsr / torchvision)

# isort: split
from conftest import DATA

from basicsr_distill import distilled_set as ds
from basicsr_distill.distilled_set import (DistilledSetWriter, load_pair, options_hash, read_manifest,
                                           validate_distilled_set, write_meta_info)
from basicsr_distill.distilled_set.manifest import _write_json_atomic

T91 = osp.join(DATA, 'data', 'train', 't91')
SCALE = 2
SOURCE = {'folder': T91, 'num_images': 91}
SIZE = {'r': 0.1}
OPTIONS = {'name': 'idc_test', 'scale': SCALE, 'distill': {'iters': 3, 'lr': 0.01, 'factor': (2, 2)}}


def real_pairs(prefix, n, hr_hw=(40, 48), first=1, scale=SCALE, seed=0):
    """Real HR crops of t91 images with a float (non-quantised, slightly out-of-range) LR, as synthetic LR is."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        img = cv2.imread(osp.join(T91, f't{first + i}.png'), cv2.IMREAD_COLOR)[..., ::-1]
        h, w = hr_hw
        gt = img[:h, :w].astype(np.float32) / 255.
        lq = cv2.resize(gt, (w // scale, h // scale), interpolation=cv2.INTER_AREA)
        lq = (lq + rng.normal(0, 0.05, lq.shape)).astype(np.float32)  # reaches below 0 and above 1
        pairs.append({'name': f'{prefix}{i}', 'lq': lq, 'gt': gt, 'info': {'source_image': f't{first + i}.png'}})
    return pairs


def new_writer(root, **kwargs):
    args = dict(method='idc', scale=SCALE, source=SOURCE, size_control=SIZE, options=OPTIONS)
    args.update(kwargs)
    return DistilledSetWriter(root, **args)


def tmp_files(root):
    return [osp.join(d, f) for d, _, files in os.walk(root) for f in files if f.startswith('.distill-tmp-')]


def test_round_trip(tmp_path):
    root = str(tmp_path / 'set')
    writer = new_writer(root)
    pairs0, pairs1 = real_pairs('u0_', 2), real_pairs('u1_', 1, hr_hw=(64, 56), first=5)
    writer.write_unit(0, pairs0)
    writer.write_unit('1', pairs1)
    manifest = writer.finalize({'final_psnr': np.float32(30.5)})

    assert manifest['complete'] is True and manifest['num_pairs'] == 3
    assert manifest['units_finished'] == ['0', '1']
    assert manifest['final_psnr'] == 30.5 and manifest['lr_for_training'] == 'lr_float'
    for key in ('format_version', 'method', 'scale', 'source', 'size_control', 'options', 'options_hash', 'pairs',
                'wall_time_s', 'versions', 'created', 'updated'):
        assert key in manifest
    assert set(manifest['versions']) >= {'python', 'torch', 'basicsr', 'basicsr_distill', 'numpy', 'cv2', 'platform'}
    assert manifest['options']['distill']['factor'] == [2, 2]
    assert manifest == read_manifest(root) == validate_distilled_set(root, scale=SCALE, require_complete=True)
    entry = dict(manifest['pairs'][2])
    hashes = entry.pop('sha256')  # the SHA-256 of each written file (format_version 2)
    assert hashes == {
        k: ds.sha256_hex(np.fromfile(p, np.uint8).tobytes())
        for k, p in ds.pair_paths(root, 'u1_0').items()
    }
    assert entry == {
        'name': 'u1_0',
        'unit': '1',
        'hr_shape': [64, 56, 3],
        'lr_shape': [32, 28, 3],
        'source_image': 't5.png'
    }

    for pair in pairs0 + pairs1:
        lq_in, gt_in = np.clip(pair['lq'], 0, 1), np.clip(pair['gt'], 0, 1)
        lq, gt = load_pair(root, pair['name'])
        assert lq.dtype == np.float32 and np.array_equal(lq, lq_in)
        assert np.abs(gt - gt_in).max() <= 0.5 / 255 + 1e-6
        lq_png, _ = load_pair(root, pair['name'], lq_source='png')
        assert np.abs(lq_png - lq_in).max() <= 0.5 / 255 + 1e-6
        assert np.abs(lq_png - lq_in).max() > 0  # the PNG is quantised, the float copy is not
        raw = cv2.imread(ds.pair_paths(root, pair['name'])['hr'], cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint8 and np.array_equal(raw[..., ::-1], np.round(gt_in * 255).astype(np.uint8))

    with open(osp.join(root, 'meta_info.txt')) as f:
        assert f.read() == 'u0_0.png (40,48,3)\nu0_1.png (40,48,3)\nu1_0.png (64,56,3)\n'
    assert tmp_files(root) == []
    with pytest.raises(ValueError, match='lq_source'):
        load_pair(root, 'u0_0', lq_source='jpg')


def test_basicsr_paired_image_dataset_reads_the_set(tmp_path):
    from basicsr.data import build_dataset

    root = str(tmp_path / 'set')
    writer = new_writer(root)
    pairs = real_pairs('p', 3)
    writer.write_unit(0, pairs)
    writer.finalize()
    dataset = build_dataset({
        'name': 'distilled',
        'type': 'PairedImageDataset',
        'dataroot_gt': osp.join(root, 'hr'),
        'dataroot_lq': osp.join(root, 'lr'),
        'meta_info_file': osp.join(root, 'meta_info.txt'),
        'filename_tmpl': '{}',
        'io_backend': {
            'type': 'disk'
        },
        'phase': 'val',
        'scale': SCALE
    })
    assert len(dataset) == 3
    for i, pair in enumerate(pairs):
        item = dataset[i]
        assert item['gt_path'] == osp.join(root, 'hr', f'p{i}.png')
        assert item['lq_path'] == osp.join(root, 'lr', f'p{i}.png')
        lq = item['lq'].permute(1, 2, 0).numpy()
        assert np.abs(lq - np.clip(pair['lq'], 0, 1)).max() <= 0.5 / 255 + 1e-6
        assert tuple(item['gt'].shape) == (3, 40, 48)


def test_unit_rewrite_is_idempotent(tmp_path):
    root = str(tmp_path / 'set')
    writer = new_writer(root)
    writer.write_unit('a', real_pairs('a', 1))
    writer.write_unit('b', real_pairs('b', 3, first=10))
    new_b = real_pairs('b', 2, first=20, seed=1)
    writer.write_unit('b', new_b)
    writer.write_unit('b', new_b)

    manifest = validate_distilled_set(root)
    assert manifest['units_finished'] == ['a', 'b']
    assert [p['name'] for p in manifest['pairs']] == ['a0', 'b0', 'b1']
    assert [p['source_image'] for p in manifest['pairs']] == ['t1.png', 't20.png', 't21.png']
    assert all(not osp.exists(v) for v in ds.pair_paths(root, 'b2').values())  # dropped pair removed
    assert np.array_equal(load_pair(root, 'b1')[0], np.clip(new_b[1]['lq'], 0, 1))
    assert tmp_files(root) == []
    with pytest.raises(ValueError, match="'a0' is already used by unit 'a'"):
        writer.write_unit('c', real_pairs('a', 1))


def test_resume_keeps_finished_units(tmp_path):
    root = str(tmp_path / 'set')
    writer = new_writer(root)
    writer.write_unit(0, real_pairs('u0_', 1))
    writer.write_unit(1, real_pairs('u1_', 1, first=3))
    first = writer.manifest

    # BasicSR draws a new manual_seed per start and fills in 'path': neither blocks a resume
    options = dict(OPTIONS, manual_seed=1234, path={'experiments_root': '/elsewhere'})
    resumed = new_writer(root, options=options)
    assert resumed.finished_units == ['0', '1']
    assert resumed.is_finished(0) and resumed.is_finished('1') and not resumed.is_finished(2)
    resumed.write_unit(2, real_pairs('u2_', 1, first=6))
    final = resumed.finalize()
    assert final['units_finished'] == ['0', '1', '2'] and final['num_pairs'] == 3
    assert final['created'] == first['created']
    assert final['wall_time_s'] >= first['wall_time_s']
    assert final['options']['manual_seed'] == 1234
    assert validate_distilled_set(root, require_complete=True)['pairs'][:2] == first['pairs']

    # resuming a complete set skips everything
    again = new_writer(root)
    assert again.complete and again.finished_units == ['0', '1', '2']


@pytest.mark.parametrize('change, words', [
    ({
        'options': dict(OPTIONS, distill={
            'iters': 4,
            'lr': 0.01,
            'factor': (2, 2)
        })
    }, 'distill.iters'),
    ({
        'method': 'gsdd'
    }, 'method'),
    ({
        'scale': 3
    }, 'scale'),
    ({
        'size_control': {
            'ipc': 10
        }
    }, 'size_control'),
])
def test_resume_with_another_run_raises(tmp_path, change, words):
    root = str(tmp_path / 'set')
    new_writer(root).write_unit(0, real_pairs('u', 1))
    before = open(osp.join(root, 'distill.json')).read()
    with pytest.raises(ValueError) as err:
        new_writer(root, **change)
    message = str(err.value)
    assert osp.join(root, 'distill.json') in message and words in message and 'another output folder' in message
    assert open(osp.join(root, 'distill.json')).read() == before


def test_resume_false_on_existing_set_raises(tmp_path):
    root = str(tmp_path / 'set')
    new_writer(root).write_unit(0, real_pairs('u', 1))
    with pytest.raises(FileExistsError, match='distill.json'):
        new_writer(root, resume=False)
    assert validate_distilled_set(root)['num_pairs'] == 1


def test_folder_with_foreign_images_is_refused(tmp_path):
    os.makedirs(tmp_path / 'set' / 'hr')
    cv2.imwrite(str(tmp_path / 'set' / 'hr' / 'mine.png'), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FileExistsError, match='distill.json does not exist'):
        new_writer(str(tmp_path / 'set'))
    assert osp.isfile(tmp_path / 'set' / 'hr' / 'mine.png')


def test_invalid_pairs_write_nothing(tmp_path):
    root = str(tmp_path / 'set')
    writer = new_writer(root)
    good = real_pairs('g', 1)[0]
    bad_cases = [
        (dict(good, gt=good['gt'][:38]), "Pair 'g0': gt shape"),
        (dict(good, name='g0.png'), 'Invalid pair name'),
        (dict(good, name='a b'), 'Invalid pair name'),
        (dict(good, lq=(good['lq'] * 255).astype(np.uint8)), "Pair 'g0': lq must be a float"),
        (dict(good, lq=good['lq'][..., :1]), r'\(H, W, 3\)'),
        (dict(good, lq=np.where(good['lq'] > 0.5, np.nan, good['lq']).astype(np.float32)), 'NaN'),
        (dict(good, info={'unit': 3}), 'reserved'),
        ({
            'name': 'g0',
            'hr': good['gt'],
            'lr': good['lq']
        }, 'keys name, lq, gt'),
    ]
    for pair, message in bad_cases:
        with pytest.raises(ValueError, match=message):
            writer.write_unit(0, [pair])
    with pytest.raises(ValueError, match='used twice'):
        writer.write_unit(0, [good, good])
    with pytest.raises(TypeError):
        writer.write_unit(1.5, [good])
    assert read_manifest(root)['pairs'] == [] and os.listdir(osp.join(root, 'hr')) == []


def test_crash_before_manifest_update_keeps_previous_manifest(tmp_path, monkeypatch, caplog):
    root = str(tmp_path / 'set')
    writer = new_writer(root)
    writer.write_unit(0, real_pairs('u0_', 1))
    before = read_manifest(root)

    real_replace = os.replace

    def crashing_replace(src, dst):
        if osp.basename(dst) == 'distill.json':
            raise OSError('simulated crash while committing the manifest')
        return real_replace(src, dst)

    monkeypatch.setattr(os, 'replace', crashing_replace)
    with pytest.raises(OSError, match='simulated crash'):
        writer.write_unit(1, real_pairs('u1_', 2, first=4))
    monkeypatch.undo()

    # the pair files were written, the manifest (and meta_info.txt) still describe the previous state
    assert osp.isfile(ds.pair_paths(root, 'u1_0')['hr'])
    assert read_manifest(root) == before
    assert validate_distilled_set(root)['units_finished'] == ['0']
    assert writer.finished_units == ['0']
    assert tmp_files(root) == []

    with caplog.at_level(logging.WARNING, logger='basicsr'):
        resumed = new_writer(root)
    assert 'not listed in distill.json' in caplog.text  # the orphaned files of the crashed unit are reported
    assert not resumed.is_finished(1)
    resumed.write_unit(1, real_pairs('u1_', 2, first=4))
    assert validate_distilled_set(root)['units_finished'] == ['0', '1']


def test_read_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='distill.json'):
        read_manifest(str(tmp_path))
    path = tmp_path / 'distill.json'
    path.write_text('{"format": "basicsr_distill.distilled_set", ')
    with pytest.raises(ValueError, match=f'{path} is not valid JSON'):
        read_manifest(str(tmp_path))
    path.write_text('{"images": []}')
    with pytest.raises(ValueError, match='is not a distilled-set manifest'):
        read_manifest(str(tmp_path))
    with pytest.raises(ValueError, match='is not valid JSON'):
        path.write_text('not json')
        new_writer(str(tmp_path))


def test_validate_distilled_set_errors(tmp_path):
    root = str(tmp_path / 'set')
    writer = new_writer(root)
    writer.write_unit(0, real_pairs('p', 2))
    manifest_path = osp.join(root, 'distill.json')

    with pytest.raises(ValueError) as err:
        validate_distilled_set(root, scale=4)
    assert manifest_path in str(err.value) and 'x2' in str(err.value) and 'x4' in str(err.value)
    with pytest.raises(ValueError, match='not complete'):
        validate_distilled_set(root, require_complete=True)

    meta_path = osp.join(root, 'meta_info.txt')
    with open(meta_path, 'w') as f:
        f.write('p0.png (40,48,3)\n')
    with pytest.raises(ValueError, match='meta_info.txt is out of sync'):
        validate_distilled_set(root)
    write_meta_info(root)
    validate_distilled_set(root)

    missing = ds.pair_paths(root, 'p1')['lr_float']
    os.remove(missing)
    with pytest.raises(ValueError, match=missing):
        validate_distilled_set(root)


def test_options_hash_and_jsonable():
    assert options_hash({'a': (1, 2), 'manual_seed': 1}) == options_hash({'a': [1, 2], 'manual_seed': 7})
    assert options_hash({'a': 1}) != options_hash({'a': 2})
    safe = ds.to_jsonable({'x': np.float32(0.5), 'y': np.arange(3), 'z': float('inf'), 1: {2, 1}, 'p': object})
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe
    assert safe['x'] == 0.5 and safe['y'] == [0, 1, 2] and safe['z'] == 'inf' and safe['1'] == [1, 2]


def test_wall_time_counts_from_start_time(tmp_path):
    """A selection scores the pool before it opens the writer: ``start_time`` makes wall_time_s cover that work."""
    import time
    started = time.monotonic() - 100.0  # as if the work had begun 100 s ago
    writer = new_writer(str(tmp_path / 'set'), start_time=started)
    writer.write_unit(0, real_pairs('u0_', 1))
    manifest = writer.finalize()
    assert 100.0 <= manifest['wall_time_s'] < 160.0
    fresh = new_writer(str(tmp_path / 'set2'))
    fresh.write_unit(0, real_pairs('u0_', 1))
    assert fresh.finalize()['wall_time_s'] < 60.0


def test_source_image_hashes_recompute_or_refuse_changed_units(tmp_path, caplog):
    """Each finished unit records the SHA-256 of its source images; on resume a unit whose image changed is dropped
    (to be computed again) or refused, naming the image; a manifest without the record still loads, with a warning."""
    import shutil
    images = tmp_path / 'images'
    images.mkdir()
    for i in (1, 2, 3):
        shutil.copy(osp.join(T91, f't{i}.png'), images / f't{i}.png')
    sources = {f'u{i}': [str(images / f't{i}.png')] for i in (1, 2, 3)}
    root = str(tmp_path / 'set')
    writer = new_writer(root, unit_sources=sources, unit_order=list(sources))
    for i in (1, 2, 3):
        writer.write_unit(f'u{i}', real_pairs(f'u{i}_', 1, first=i))
    writer.finalize()
    recorded = read_manifest(root)['unit_sources']
    assert list(recorded) == ['u1', 'u2', 'u3']
    assert recorded['u2'] == {sources['u2'][0]: ds.file_sha256(sources['u2'][0])}
    assert ds.file_sha256(sources['u2'][0]) == ds.sha256_hex(open(sources['u2'][0], 'rb').read())

    # unchanged images: nothing happens
    assert new_writer(root, unit_sources=sources, unit_order=list(sources)).recomputed_units == []
    assert read_manifest(root)['complete'] is True

    # t2 replaced by another image: refused without recompute, nothing changed
    shutil.copy(osp.join(T91, 't5.png'), images / 't2.png')
    before = open(osp.join(root, 'distill.json'), 'rb').read()
    with pytest.raises(ValueError) as err:
        new_writer(root, unit_sources=sources, recompute_changed=False, changed_hint='Rename the folder.')
    text = str(err.value)
    assert f"unit 'u2': {sources['u2'][0]} changed (SHA-256" in text and 'Rename the folder.' in text
    assert 'u1' not in text and 'u3' not in text and 'Nothing was changed' in text
    with pytest.raises(ValueError, match=sources['u2'][0]):  # a collection without u2: refused too
        new_writer(root, unit_sources=sources, recompute_changed=['u3'])
    assert open(osp.join(root, 'distill.json'), 'rb').read() == before

    # recompute: u2 dropped (its pair files removed), the others kept; rewriting it finishes the set again
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        writer = new_writer(root, unit_sources=sources, unit_order=list(sources))
    assert writer.recomputed_units == ['u2'] and not writer.is_finished('u2') and writer.is_finished('u1')
    assert f"{sources['u2'][0]} changed" in caplog.text and 'computed again' in caplog.text
    manifest = read_manifest(root)
    assert manifest['complete'] is False and list(manifest['unit_sources']) == ['u1', 'u3']
    assert not osp.exists(osp.join(root, 'hr', 'u2_0.png'))
    writer.write_unit('u2', real_pairs('u2_', 1, first=5))
    writer.finalize()
    assert read_manifest(root)['unit_sources']['u2'] == {sources['u2'][0]: ds.file_sha256(sources['u2'][0])}
    assert new_writer(root, unit_sources=sources, unit_order=list(sources)).recomputed_units == []

    # a manifest written before hashes were recorded: loads, the units are kept, one warning
    manifest = read_manifest(root)
    del manifest['unit_sources']
    _write_json_atomic(osp.join(root, 'distill.json'), manifest)
    shutil.copy(osp.join(T91, 't6.png'), images / 't3.png')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        writer = new_writer(root, unit_sources=sources, unit_order=list(sources))
    assert writer.recomputed_units == [] and writer.finished_units == ['u1', 'u2', 'u3']
    assert caplog.text.count('record no SHA-256 of their source images') == 1
    assert validate_distilled_set(root)['num_pairs'] == 3


def test_shard_merge_keeps_the_source_hashes(tmp_path):
    sources = {'a': [osp.join(T91, 't1.png')], 'b': [osp.join(T91, 't2.png')]}
    root = str(tmp_path / 'set')
    rank0 = new_writer(root, unit_sources=sources, unit_order=['a', 'b'], world_size=2)
    rank1 = new_writer(root, unit_sources={'b': sources['b']}, unit_order=['a', 'b'], world_size=2, shard=1)
    rank1.write_unit('b', real_pairs('b', 1, first=2))
    rank0.write_unit('a', real_pairs('a', 1))
    assert json.load(open(osp.join(root, 'distill.rank1.json')))['unit_sources'] == {
        'b': {
            sources['b'][0]: ds.file_sha256(sources['b'][0])
        }
    }
    rank0.merge_shards()
    recorded = rank0.finalize()['unit_sources']
    assert recorded == {u: {p[0]: ds.file_sha256(p[0])} for u, p in sources.items()} and list(recorded) == ['a', 'b']

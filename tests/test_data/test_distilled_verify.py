"""Distilled sets that can be proven intact: the SHA-256 of every file in the manifest (and in the lmdb copies),
``verify: full`` of DistilledPairedDataset and scripts/verify_distilled.py.

The damage is the kind the quick start-up check cannot see: bytes flipped in the middle of an HR PNG (its length,
header and IEND intact) and an HR PNG replaced by another valid PNG of the same size.
"""
import cv2
import hashlib
import importlib.util
import logging
import numpy as np
import os
import pytest
import shutil
import subprocess
import sys
from os import path as osp

import basicsr_distill  # noqa: F401  (compat fixes before basicsr / torchvision)

# isort: split
from conftest import DATA, basicsr_log

from basicsr_distill import distilled_set as ds
from basicsr_distill.data.distilled_paired_dataset import DistilledPairedDataset
from basicsr_distill.distilled_set import (DistilledSetWriter, make_distilled_lmdb, pair_paths, read_manifest,
                                           verify_distilled_set)
from basicsr_distill.distilled_set.manifest import _load_json, _write_json_atomic

T91 = osp.join(DATA, 'data', 'train', 't91')
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPT = osp.join(REPO, 'scripts', 'verify_distilled.py')
SCALE = 2
HR_HW = (40, 48)


def _pairs(prefix, first, n):
    """Real HR crops of t91 images (all HR_HW, so any HR may stand in for another) with a float LR."""
    rng = np.random.default_rng(first)
    pairs = []
    for i in range(n):
        img = cv2.imread(osp.join(T91, f't{first + i}.png'), cv2.IMREAD_COLOR)[..., ::-1]
        gt = img[:HR_HW[0], :HR_HW[1]].astype(np.float32) / 255.
        lq = cv2.resize(gt, (HR_HW[1] // SCALE, HR_HW[0] // SCALE), interpolation=cv2.INTER_AREA)
        lq = np.clip(lq + rng.normal(0, 0.02, lq.shape), 0, 1).astype(np.float32)
        pairs.append({'name': f'{prefix}{i}', 'lq': lq, 'gt': gt})
    return pairs


def _writer(root, **kwargs):
    return DistilledSetWriter(root, 'idc', SCALE, {
        'folder': T91,
        'num_images': 91
    }, {'ipc': 2}, {'scale': SCALE}, **kwargs)


@pytest.fixture(scope='module')
def clean_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('verify') / 'set')
    writer = _writer(root)
    writer.write_unit('a', _pairs('a', 1, 2))
    writer.write_unit('b', _pairs('b', 3, 2))
    writer.finalize()
    return root


@pytest.fixture
def root(clean_root, tmp_path):
    """A private copy of the clean set (without lmdb copies)."""
    copy = str(tmp_path / 'set')
    shutil.copytree(clean_root, copy)
    return copy


def _sha(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _flip_middle(path):
    """Invert 8 bytes in the middle of a file: same length, same header, same end."""
    with open(path, 'rb') as f:
        data = bytearray(f.read())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(v ^ 0xFF for v in data[mid:mid + 8])
    with open(path, 'wb') as f:
        f.write(bytes(data))


def _snapshot(root):
    """Every file and folder under root with its size, mtime and SHA-256."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[osp.relpath(osp.join(folder, name), root)] = 'dir'
        for name in files:
            path = osp.join(folder, name)
            found[osp.relpath(path, root)] = (os.stat(path).st_size, os.stat(path).st_mtime_ns, _sha(path))
    return found


def _script():
    spec = importlib.util.spec_from_file_location('verify_distilled', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _opt(root, **kwargs):
    opt = {'dataroot': root, 'scale': SCALE, 'phase': 'val', 'io_backend': {'type': 'disk'}}
    opt.update(kwargs)
    return opt


def test_manifest_records_the_sha256_of_every_file(clean_root, capsys):
    manifest = read_manifest(clean_root)
    assert manifest['format_version'] == ds.FORMAT_VERSION == 2
    assert [p['name'] for p in manifest['pairs']] == ['a0', 'a1', 'b0', 'b1']
    for pair in manifest['pairs']:
        assert pair['sha256'] == {kind: _sha(path) for kind, path in pair_paths(clean_root, pair['name']).items()}
    report = verify_distilled_set(clean_root)
    assert report['problems'] == [] and report['files'] == 12 and report['unhashed'] == 0 and report['lmdb'] == []
    assert _script().main([clean_root]) == 0
    out = capsys.readouterr().out
    assert 'BAD' not in out and f'{clean_root}: 4 pairs, 12 files' in out and 'intact' in out
    with pytest.raises(ValueError, match='reserved'):  # info cannot fake the hashes
        _writer(clean_root).write_unit('c', [dict(_pairs('c', 7, 1)[0], info={'sha256': {}})])


def test_shard_merge_keeps_the_hashes(tmp_path):
    root = str(tmp_path / 'set')
    rank0 = _writer(root, world_size=2)
    rank1 = _writer(root, world_size=2, shard=1)
    rank0.write_unit('a', _pairs('a', 1, 1))
    rank1.write_unit('b', _pairs('b', 3, 2))
    shard = ds.read_shard(ds.shard_path(root, 1))
    assert [p['sha256']['hr'] for p in shard['pairs']] == [_sha(pair_paths(root, n)['hr']) for n in ('b0', 'b1')]
    assert rank0.merge_shards() == ['b']
    manifest = rank0.finalize()
    for pair in manifest['pairs']:
        assert pair['sha256'] == {kind: _sha(path) for kind, path in pair_paths(root, pair['name']).items()}
    assert verify_distilled_set(root)['problems'] == []


def test_malformed_hash_field_is_refused(root):
    manifest = read_manifest(root)
    manifest['pairs'][1]['sha256']['hr'] = 'not-a-hash'
    _write_json_atomic(osp.join(root, 'distill.json'), manifest)
    with pytest.raises(ValueError, match="distill.json: pair 'a1': its 'sha256' must map"):
        ds.validate_distilled_set(root)
    report = verify_distilled_set(root)
    assert [p for p, _ in report['problems']] == [osp.join(root, 'distill.json')]


def test_quick_check_misses_what_full_verification_finds(clean_root, root, capsys):
    """Mid-file corruption and a same-size swap pass the default check and are all named by verify: full."""
    flipped, swapped = pair_paths(root, 'a0')['hr'], pair_paths(root, 'b1')['hr']
    _flip_middle(flipped)
    shutil.copy(pair_paths(root, 'b0')['hr'], swapped)  # another valid PNG of the same size
    assert osp.getsize(flipped) == osp.getsize(pair_paths(clean_root, 'a0')['hr'])  # same length
    assert cv2.imread(swapped).shape == cv2.imread(pair_paths(clean_root, 'b1')['hr']).shape  # same image size

    # the default (quick) check passes both: the flipped file fails when read, the swapped one trains silently
    quick = DistilledPairedDataset(_opt(root))
    assert quick.verify == 'quick'
    with pytest.raises(ValueError, match=f'{flipped} is not a readable image'):
        quick[0]
    assert np.array_equal(quick[3]['gt'].numpy(), quick[2]['gt'].numpy())  # b1 trains on b0's HR, unnoticed

    with pytest.raises(ValueError) as err:
        DistilledPairedDataset(_opt(root, verify='full'))
    message = str(err.value)
    assert 'is not intact (verify: full): 2 bad file(s) of 12 read' in message
    assert f"{flipped} (pair 'a0'): its SHA-256 is not the one recorded" in message
    assert 'does not decode as an image' in message
    assert f"{swapped} (pair 'b1'): its SHA-256 is not the one recorded" in message

    assert _script().main([root]) == 1
    out = capsys.readouterr().out
    assert f'BAD {flipped}' in out and f'BAD {swapped}' in out and 'NOT intact, 2 bad file(s)' in out


def test_full_verification_names_every_bad_file(root):
    truncated, missing, swapped = pair_paths(root, 'a1')['lr'], pair_paths(root,
                                                                           'b0')['lr_float'], pair_paths(root,
                                                                                                         'b1')['hr']
    with open(truncated, 'rb') as f:
        data = f.read()
    with open(truncated, 'wb') as f:
        f.write(data[:-20])
    os.remove(missing)
    shutil.copy(pair_paths(root, 'a0')['hr'], swapped)
    with open(osp.join(root, 'meta_info.txt'), 'a') as f:
        f.write('zz.png (40,48,3)\n')
    report = verify_distilled_set(root)
    assert [p for p, _ in report['problems']] == [truncated, missing, swapped, osp.join(root, 'meta_info.txt')]
    lines = dict(report['problems'])
    assert 'is truncated' in lines[truncated] and 'is missing' in lines[missing]
    # the quick check stops at the first problem
    with pytest.raises(ValueError, match=f'{truncated} .* is truncated'):
        DistilledPairedDataset(_opt(root))


def test_script_exit_codes(root, tmp_path, capsys):
    script = _script()
    assert script.main([str(tmp_path / 'nowhere')]) == 2
    assert 'is not a folder' in capsys.readouterr().err
    os.makedirs(tmp_path / 'empty')
    assert script.main([str(tmp_path / 'empty')]) == 2
    assert 'No distilled-set manifest' in capsys.readouterr().err
    (tmp_path / 'foreign').mkdir()
    (tmp_path / 'foreign' / 'distill.json').write_text('{"images": []}')
    assert script.main([str(tmp_path / 'foreign')]) == 2
    assert 'is not a distilled-set manifest' in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        script.main([])
    assert err.value.code == 2
    capsys.readouterr()

    # a damaged manifest is damage (1), not a usage error
    damaged = str(tmp_path / 'damaged')
    shutil.copytree(root, damaged)
    with open(osp.join(damaged, 'distill.json'), 'r+b') as f:
        f.truncate(100)
    assert script.main([damaged]) == 1
    assert f'BAD {osp.join(damaged, "distill.json")} is not valid JSON' in capsys.readouterr().out

    # the real command line
    _flip_middle(pair_paths(root, 'b0')['hr'])
    env = dict(os.environ, OMP_NUM_THREADS='1')
    done = subprocess.run([sys.executable, SCRIPT, root], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    assert f"BAD {pair_paths(root, 'b0')['hr']} (pair 'b0')" in done.stdout


def test_old_manifest_without_hashes(root, capsys):
    manifest = read_manifest(root)
    manifest['format_version'] = 1
    for pair in manifest['pairs']:
        del pair['sha256']
    _write_json_atomic(osp.join(root, 'distill.json'), manifest)

    with basicsr_log(logging.INFO) as log:
        for verify in ('quick', 'full', 'full'):
            assert len(DistilledPairedDataset(_opt(root, verify=verify))) == 4
        report = verify_distilled_set(root)
    assert log.getvalue().count('record no SHA-256') == 1  # once per process and manifest
    assert '4 of 4 pairs record no SHA-256' in log.getvalue() and 'can only decode' in log.getvalue()
    assert report['problems'] == [] and report['unhashed'] == 12
    assert _script().main([root]) == 0
    assert 'note: 12 of these files have no recorded SHA-256' in capsys.readouterr().out

    # without hashes, full verification still decodes (finds the flipped file) but cannot see a same-size swap
    _flip_middle(pair_paths(root, 'a0')['hr'])
    shutil.copy(pair_paths(root, 'b0')['hr'], pair_paths(root, 'b1')['hr'])
    with pytest.raises(ValueError) as err:
        DistilledPairedDataset(_opt(root, verify='full'))
    assert '1 bad file(s)' in str(err.value) and f"{pair_paths(root, 'a0')['hr']} (pair 'a0')" in str(err.value)
    assert 'b1' not in str(err.value)


@pytest.mark.parametrize('lq_source', ['float', 'png'])
def test_training_reads_check_the_hash(root, lq_source):
    """A file changed after start-up is named when it is read (verify: full); the quick check reads it silently."""
    opt = _opt(root, phase='train', gt_size=16, lq_source=lq_source)
    full, quick = DistilledPairedDataset(dict(opt, verify='full')), DistilledPairedDataset(opt)
    assert full[1]['gt'].shape == (3, 16, 16)

    gt_path = pair_paths(root, 'a1')['hr']
    shutil.copy(pair_paths(root, 'a0')['hr'], gt_path)
    with pytest.raises(ValueError) as err:
        full[1]
    assert f'{gt_path}: its SHA-256' in str(err.value) and osp.join(root, 'distill.json') in str(err.value)
    assert quick[1]['gt'].shape == (3, 16, 16)

    lq_path = pair_paths(root, 'b0')['lr_float' if lq_source == 'float' else 'lr']
    shutil.copy(pair_paths(root, 'b1')['lr_float' if lq_source == 'float' else 'lr'], lq_path)
    with pytest.raises(ValueError, match=f'{lq_path}: its SHA-256'):
        full[2]
    assert full[3]['lq'].shape == (3, 8, 8)  # untouched pairs still read


def test_lmdb_copies_record_and_check_value_hashes(root, capsys):
    import lmdb
    make_distilled_lmdb(root)
    hashes = ds.lmdb_hashes(root)
    for kind, db_path in ds.lmdb_paths(root).items():
        env = lmdb.open(db_path, readonly=True, lock=False)
        with env.begin() as txn:
            assert hashes[kind] == {
                n: hashlib.sha256(txn.get(n.encode())).hexdigest()
                for n in ('a0', 'a1', 'b0', 'b1')
            }
        env.close()
    report = verify_distilled_set(root)
    assert report['problems'] == [] and report['files'] == 12 + 8 and len(report['lmdb']) == 2

    # a value replaced by another valid PNG of the same size (before any dataset opens the database)
    env = lmdb.open(ds.lmdb_paths(root)['hr'], map_size=64 << 20)
    with env.begin(write=True) as txn:
        txn.put(b'a1', txn.get(b'a0'))
    env.close()
    assert _script().main([root]) == 1
    assert f"BAD key 'a1' of {ds.lmdb_paths(root)['hr']}: its SHA-256" in capsys.readouterr().out
    assert _script().main([root, '--no-lmdb']) == 0
    capsys.readouterr()
    assert len(DistilledPairedDataset(_opt(root, io_backend={'type': 'lmdb'}))) == 4  # the quick check passes it
    with pytest.raises(ValueError, match=f"(?s)1 bad file.*key 'a1' of {ds.lmdb_paths(root)['hr']}: its SHA-256"):
        DistilledPairedDataset(_opt(root, io_backend={'type': 'lmdb'}, verify='full'))


def test_lmdb_training_reads_check_the_hash_and_old_lmdb_copies_decode_only(root):
    make_distilled_lmdb(root)
    dataset = DistilledPairedDataset(_opt(root, io_backend={'type': 'lmdb'}, verify='full'))
    assert dataset[0]['gt'].shape == (3, *HR_HW)
    dataset.paths[0]['gt_sha256'] = '0' * 64  # as if the value had changed after start-up
    hr_db = ds.lmdb_paths(root)['hr']
    with pytest.raises(ValueError, match=f"key 'a0' of {hr_db}: its SHA-256 .* {hr_db}/distill_source.json records"):
        dataset[0]

    for db_path in ds.lmdb_paths(root).values():  # lmdb copies made before the hashes were recorded
        source = osp.join(db_path, 'distill_source.json')
        record = _load_json(source)
        del record['sha256']
        _write_json_atomic(source, record)
    with basicsr_log(logging.INFO) as log:
        dataset = DistilledPairedDataset(_opt(root, io_backend={'type': 'lmdb'}, verify='full'))
    assert '8 lmdb value(s)' in log.getvalue() and 'decoded only' in log.getvalue()
    assert dataset.paths[0]['gt_sha256'] is None and dataset[0]['gt'].shape == (3, *HR_HW)


def test_lmdb_conversion_refuses_damaged_pngs(root):
    _flip_middle(pair_paths(root, 'b1')['lr'])
    with pytest.raises(ValueError, match=f"(?s)before the lmdb conversion.*{pair_paths(root, 'b1')['lr']}"):
        make_distilled_lmdb(root)
    assert not [v for v in os.listdir(root) if v.endswith('.lmdb') or v.startswith('.distill-tmp-')]


def test_verification_changes_nothing(root, capsys):
    make_distilled_lmdb(root)
    _flip_middle(pair_paths(root, 'a0')['hr'])
    before = _snapshot(root)
    verify_distilled_set(root)
    assert _script().main([root]) == 1
    with pytest.raises(ValueError, match='not intact'):
        DistilledPairedDataset(_opt(root, verify='full'))
    dataset = DistilledPairedDataset(_opt(root, verify='full', io_backend={'type': 'lmdb'}))
    assert dataset[1]['gt'].shape == (3, *HR_HW)
    assert _snapshot(root) == before


def test_unknown_verify_value_is_refused(clean_root):
    with pytest.raises(ValueError, match="the option verify must be 'quick' .* or 'full' .*got 'fast'"):
        DistilledPairedDataset(_opt(clean_root, verify='fast'))
    assert DistilledPairedDataset(_opt(clean_root, verify=None)).verify == 'quick'
    assert 'verify=full' in repr(DistilledPairedDataset(_opt(clean_root, verify='full')))


def test_incomplete_set_is_refused_unless_allowed_and_reported(root, capsys):
    _writer(root).write_unit('c', _pairs('c', 5, 1))  # a run that goes on and is interrupted before it finishes
    manifest_path = osp.join(root, 'distill.json')
    assert read_manifest(root)['complete'] is False
    for verify in ('quick', 'full'):
        with pytest.raises(ValueError) as err:
            DistilledPairedDataset(_opt(root, verify=verify))
        assert f'{manifest_path} is not complete' in str(err.value) and 'allow_incomplete: true' in str(err.value)
        assert '3 unit(s) finished, 5 pair(s)' in str(err.value)
    with pytest.raises(ValueError, match='allow_incomplete must be true or false'):
        DistilledPairedDataset(_opt(root, allow_incomplete='yes'))
    with basicsr_log(logging.WARNING) as log:
        assert len(DistilledPairedDataset(_opt(root, allow_incomplete=True))) == 5
    assert f'{manifest_path} is not complete' in log.getvalue()

    script = _script()
    assert script.main([root]) == 3
    out = capsys.readouterr().out
    assert f'INCOMPLETE {manifest_path} is not complete' in out and 'intact, INCOMPLETE' in out and 'BAD' not in out
    _flip_middle(pair_paths(root, 'c0')['hr'])  # damage and incomplete: damage wins the exit status
    assert script.main([root]) == 1
    assert 'INCOMPLETE' in capsys.readouterr().out

    writer = _writer(root)
    writer.write_unit('c', _pairs('c', 5, 1))  # the rerun rewrites the damaged unit and finishes
    writer.finalize()
    assert script.main([root]) == 0
    assert 'INCOMPLETE' not in capsys.readouterr().out
    assert len(DistilledPairedDataset(_opt(root))) == 5


def test_manifest_scale_that_disagrees_with_the_files(root, capsys):
    manifest = read_manifest(root)
    manifest['scale'] = 4  # the pairs are x2: HR 40x48, LR 20x24
    _write_json_atomic(osp.join(root, 'distill.json'), manifest)
    assert _script().main([root]) == 1
    out = capsys.readouterr().out
    assert f"BAD {osp.join(root, 'distill.json')}: pair 'a0': its HR (40, 48) is not scale (4) x its LR (20, 24) " \
           '(x2)' in out
    assert 'NOT intact' in out
    for scale in (2, 4):  # the training start names the disagreement, not a scale mismatch with the option
        with pytest.raises(ValueError, match=r'is not scale \(4\) x its LR'):
            DistilledPairedDataset(_opt(root, scale=scale))

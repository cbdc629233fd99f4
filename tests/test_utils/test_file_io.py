"""Tests of the atomic writers (basicsr_distill.utils.file_io): replace on success, nothing changed on failure."""
import json
import os
import os.path as osp
import pytest

import basicsr_distill  # noqa: F401  (must precede basicsr / torchvision / diffusers)

# isort: split

import torch

from basicsr_distill.utils import file_io
from basicsr_distill.utils.file_io import (TMP_PREFIX, atomic_path, is_tmp_name, remove_stale_tmps, tmp_path,
                                           torch_save_atomic, write_bytes_atomic, write_json_atomic, write_text_atomic)


def _listing(folder):
    return sorted(os.listdir(folder))


def test_tmp_path_is_next_to_the_file_and_recognised():
    path = osp.join('some', 'folder', 'distill.json')
    tmp = tmp_path(path)
    assert osp.dirname(tmp) == osp.join('some', 'folder')
    name = osp.basename(tmp)
    assert name.startswith(f'{TMP_PREFIX}{os.getpid()}-') and name.endswith('-distill.json')
    assert is_tmp_name(name) and not is_tmp_name('distill.json')
    assert tmp_path(path) != tmp  # unique per call
    assert TMP_PREFIX == '.distill-tmp-'


def test_success_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / 'a.bin')
    write_bytes_atomic(path, b'old')
    with atomic_path(path) as tmp:
        assert osp.dirname(tmp) == str(tmp_path) and is_tmp_name(osp.basename(tmp))
        with open(tmp, 'wb') as f:
            f.write(b'new')
        with open(path, 'rb') as f:
            assert f.read() == b'old'  # not replaced before the block ends
    with open(path, 'rb') as f:
        assert f.read() == b'new'
    assert _listing(tmp_path) == ['a.bin']


def test_failure_inside_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = str(tmp_path / 'a.txt')
    write_text_atomic(path, 'old\n')
    with pytest.raises(RuntimeError, match='killed half-way'):
        with atomic_path(path) as tmp:
            with open(tmp, 'w') as f:
                f.write('half')
            raise RuntimeError('killed half-way')
    with open(path) as f:
        assert f.read() == 'old\n'
    assert _listing(tmp_path) == ['a.txt']
    with pytest.raises(KeyboardInterrupt):  # BaseException too
        with atomic_path(str(tmp_path / 'b.txt')) as tmp:
            open(tmp, 'w').close()
            raise KeyboardInterrupt
    assert _listing(tmp_path) == ['a.txt']


def test_failed_replace_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / 'a.bin')
    write_bytes_atomic(path, b'old')

    def failing_replace(src, dst):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'replace', failing_replace)
    with pytest.raises(OSError, match='disk full'):
        write_bytes_atomic(path, b'new')
    monkeypatch.undo()
    with open(path, 'rb') as f:
        assert f.read() == b'old'
    assert _listing(tmp_path) == ['a.bin']


def test_a_temporary_folder_is_replaced_or_removed_whole(tmp_path):
    target = str(tmp_path / 'x.lmdb')
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            os.makedirs(osp.join(tmp, 'sub'))
            open(osp.join(tmp, 'sub', 'data.mdb'), 'w').close()
            raise ValueError('conversion failed')
    assert _listing(tmp_path) == []
    with atomic_path(target) as tmp:
        os.makedirs(tmp)
        write_text_atomic(osp.join(tmp, 'data.mdb'), 'db')
    assert _listing(tmp_path) == ['x.lmdb'] and _listing(target) == ['data.mdb']


def test_text_and_parents(tmp_path):
    path = str(tmp_path / 'new' / 'folder' / 'r.md')
    assert write_text_atomic(path, 'a\r\nb\nü') == path  # parents created by default
    with open(path, 'rb') as f:
        assert f.read() == 'a\r\nb\nü'.encode('utf-8')  # UTF-8, no newline translation
    with pytest.raises(FileNotFoundError):
        write_bytes_atomic(str(tmp_path / 'missing' / 'x.bin'), b'')  # bytes: no parents unless asked
    assert write_bytes_atomic(str(tmp_path / 'made' / 'x.bin'), b'1', make_parents=True)
    assert _listing(tmp_path / 'made') == ['x.bin']


def test_json_is_standard_and_nan_is_refused_with_nothing_written(tmp_path):
    path = str(tmp_path / 'm.json')
    write_json_atomic(path, {'a': 1, 'b': [1.5, None]}, indent=1)
    with open(path) as f:
        text = f.read()
    assert text.endswith('}\n') and json.loads(text) == {'a': 1, 'b': [1.5, None]}
    for bad in (float('nan'), float('inf'), -float('inf')):
        with pytest.raises(ValueError):
            write_json_atomic(path, {'a': bad})
        with pytest.raises(ValueError):
            write_json_atomic(str(tmp_path / 'other.json'), [bad])
    with open(path) as f:
        assert f.read() == text
    assert _listing(tmp_path) == ['m.json']  # no other.json, no temporary


def test_remove_stale_tmps(tmp_path):
    keep = ['distill.json', '.hidden', 'x.distill-tmp-1-a.json']
    stale = [f'{TMP_PREFIX}123-0123abcd-distill.json', f'{TMP_PREFIX}9-ffffffff-meta_info.txt']
    for name in keep + stale:
        (tmp_path / name).write_text('x')
    (tmp_path / f'{TMP_PREFIX}7-00000000-hr.lmdb').mkdir()  # a folder: never removed
    removed = remove_stale_tmps(str(tmp_path), base='distill.json')
    assert removed == [str(tmp_path / stale[0])]
    assert sorted(remove_stale_tmps(str(tmp_path))) == [str(tmp_path / stale[1])]
    assert _listing(tmp_path) == sorted(keep + [f'{TMP_PREFIX}7-00000000-hr.lmdb'])
    assert remove_stale_tmps(str(tmp_path / 'missing')) == []


def test_tmp_argument_is_honoured(tmp_path, monkeypatch):
    path = str(tmp_path / '14.state')
    given = f'{path}.tmp'
    with atomic_path(path, tmp=given) as tmp:
        assert tmp == given
        with open(tmp, 'w') as f:
            f.write('state')
    assert _listing(tmp_path) == ['14.state']
    with pytest.raises(RuntimeError):
        with atomic_path(path, tmp=given) as tmp:
            open(tmp, 'w').close()
            raise RuntimeError
    assert _listing(tmp_path) == ['14.state']

    seen = []
    real_save = torch.save

    def recording_save(obj, f, *args, **kwargs):
        seen.append(getattr(f, 'name', f))  # an open file: torch's own writer does not report a failed write's cause
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', recording_save)
    assert torch_save_atomic(path, {'iter': 14, 'w': torch.ones(2)}, tmp=given) == path
    monkeypatch.undo()
    assert seen == [given]  # written under the given name, then moved into place
    assert torch.load(path)['iter'] == 14 and _listing(tmp_path) == ['14.state']
    torch_save_atomic(str(tmp_path / 'stage2.pth'), {'k': 1})  # default temporary name
    assert _listing(tmp_path) == ['14.state', 'stage2.pth']


def test_module_is_the_one_used_by_the_writers():
    from basicsr_distill.benchmark import grid
    from basicsr_distill.distilled_set import layout, manifest, writer

    assert grid.write_text_atomic is file_io.write_text_atomic
    assert manifest.write_bytes_atomic is file_io.write_bytes_atomic
    assert writer.write_bytes_atomic is file_io.write_bytes_atomic
    assert layout.TMP_PREFIX is file_io.TMP_PREFIX

"""Faults that docs/Robustness.md promises a clear message for: a full disk and an unwritable ``training_states/``
mid-run, an unreadable last training state on ``--auto_resume``, a pickle payload as weights (BasicSR's own loader and
the package's), and a second ``torchrun`` job on the name of a running one.

Faults are simulated, not real: ``os.fsync`` of the atomic writer raises ``ENOSPC`` (Python raises a full disk on a
write, flush or fsync naming no file; torch's own writer raised ``RuntimeError: [enforce fail at
inline_container.cc:672] . unexpected pos ...``), a folder is replaced by a file while the run is inside a step (root
ignores permissions), a state file is cut short. The runs are the tiny IDC option file of test_kill_resume.py in
process (about 10 s each on 2 shared CPU cores) and, for the lock, two ``torchrun`` jobs of 2 processes (gloo on the
CPU, about 40 s). A payload's ``__reduce__`` calls :func:`write_marker`, which would write a marker file: the tests
check that it never does.
"""
import errno
import io
import json
import os
import os.path as osp
import pathlib
import pickle
import pytest
import signal
import socket
import torch

import basicsr_distill  # noqa: F401  (compat fixes before basicsr / torchvision)

# isort: split
from conftest import (descendants, failed, finish, idc_run, leftovers, listing, logged, start_run, state_iters, stop,
                      stop_group, tiny_edsr_options, train_in_process, wait_for)

from basicsr.models import build_model
from basicsr_distill import compat
from basicsr_distill.distilled_set import validate_distilled_set
from basicsr_distill.models.distill_base_model import DistillBaseModel
from basicsr_distill.utils import file_io, run_lock
from basicsr_distill.utils.checkpoint import load_network
from basicsr_distill.utils.file_io import torch_save_atomic, write_bytes_atomic

NO_SPACE = (errno.ENOSPC, 'No space left on device')


# ------------------------------------------------------------------------------------------------ helpers
def fd_path(fd):
    return os.readlink(f'/proc/self/fd/{fd}')


def full_disk_for(monkeypatch, condition):
    """``os.fsync`` raises ENOSPC (naming no file, as the kernel reports it) for files whose path meets
    ``condition``; the others are synced."""
    real = os.fsync

    def fsync(fd):
        if condition(fd_path(fd)):
            raise OSError(*NO_SPACE)
        return real(fd)

    monkeypatch.setattr(file_io.os, 'fsync', fsync)


def assert_partial_set_then_resume(opt, cwd, monkeypatch, units):
    """The set holds whole ``units``, no temporary is left; ``--auto_resume`` then completes it."""
    manifest = validate_distilled_set(osp.join(cwd, 'distilled'), scale=4, check_contents=True)
    assert manifest['units_finished'] == units and not leftovers(cwd)
    train_in_process(opt, cwd, monkeypatch, '--auto_resume')
    manifest = validate_distilled_set(osp.join(cwd, 'distilled'), scale=4, require_complete=True, check_contents=True)
    assert manifest['units_finished'] == ['t20', 'tiny', 'tt27'] and not leftovers(cwd)


# ------------------------------------------------------------------------------------------------ a full disk
def test_a_full_disk_names_the_file_it_was_writing(tmp_path, monkeypatch):
    target = tmp_path / 'out.bin'
    target.write_bytes(b'old')
    full_disk_for(monkeypatch, lambda path: True)
    with pytest.raises(OSError) as err:
        write_bytes_atomic(str(target), b'new')
    assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(target))
    assert str(err.value) == f"[Errno 28] No space left on device: '{target}'"
    assert target.read_bytes() == b'old' and os.listdir(tmp_path) == ['out.bin']  # kept, no temporary


def test_torch_save_atomic_reports_the_write_error_not_torchs_enforce_failure(tmp_path, monkeypatch):
    """torch's writer, given a path, turned a full disk into ``RuntimeError: [enforce fail ...] unexpected pos``."""

    class FullFile(io.FileIO):

        def write(self, data):
            if self.tell() + len(data) > 100:
                raise OSError(*NO_SPACE)
            return super().write(data)

    target = tmp_path / '7.state'
    monkeypatch.setattr(file_io, 'open', lambda path, mode: FullFile(path, mode.replace('b', '')), raising=False)
    with pytest.raises(OSError) as err:
        torch_save_atomic(str(target), {'x': torch.zeros(1000)}, tmp=f'{target}.tmp')
    assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(target))
    assert os.listdir(tmp_path) == []


def test_a_full_disk_mid_run_is_explained_and_auto_resume_completes_the_set(tmp_path, monkeypatch):
    cwd = str(tmp_path / 'run')
    hr = osp.join(cwd, 'distilled', 'hr')
    full_disk_for(monkeypatch, lambda path: path.startswith(hr + os.sep) and 'tt27_idc' in path)
    with pytest.raises(OSError) as err:
        train_in_process(idc_run(tmp_path), cwd, monkeypatch)
    text = str(err.value)
    assert text.startswith(f'Writing to {hr} (option path.distilled_root) failed: [Errno 28] No space left on device: '
                           f"'{hr}{os.sep}tt27_idc")
    assert 'Nothing already written there is lost or corrupted' in text and 'then rerun with --auto_resume' in text
    monkeypatch.undo()
    assert_partial_set_then_resume(idc_run(tmp_path), cwd, monkeypatch, ['t20', 'tiny'])


@pytest.mark.parametrize('fault', ['full disk', 'folder replaced'])
def test_training_states_failing_mid_run_are_named_and_auto_resume_completes_the_set(tmp_path, monkeypatch, fault):
    """A full disk on a state, or ``training_states/`` replaced by a file (unwritable, whatever the permissions):
    torch's own writer gave ``RuntimeError: [enforce fail ...]`` or ``Parent directory ... does not exist``."""
    cwd = str(tmp_path / 'run')
    states = osp.join(cwd, 'experiments', 'idc_kill', 'training_states')
    if fault == 'full disk':
        full_disk_for(monkeypatch, lambda path: path.startswith(osp.join(states, '12.state')))
    else:
        save = DistillBaseModel.save

        def breaking_save(self, epoch, current_iter):
            if current_iter == 12:
                os.rename(states, states + '_away')
                pathlib.Path(states).write_text('not a folder')
            return save(self, epoch, current_iter)

        monkeypatch.setattr(DistillBaseModel, 'save', breaking_save)
    with pytest.raises(OSError) as err:
        train_in_process(idc_run(tmp_path), cwd, monkeypatch)
    text = str(err.value)
    assert text.startswith(f"Writing to {states} (the experiment folder of option name='idc_kill') failed: [Errno ")
    assert f"{osp.join(states, '12.state')}'" in text
    assert 'This training state was not written; the earlier ones are intact' in text
    assert f'rerun with --auto_resume: finished units are skipped and the unit in progress resumes from the last ' \
           f'training state in {states}.' in text
    monkeypatch.undo()
    if fault == 'folder replaced':
        os.remove(states)
        os.rename(states + '_away', states)
    assert state_iters(cwd, 'idc_kill') == [3, 6, 9]
    assert_partial_set_then_resume(idc_run(tmp_path), cwd, monkeypatch, ['t20', 'tiny'])


# ------------------------------------------------------------------------------------------------ a bad last state
@pytest.mark.parametrize('damage', ['truncated', 'zero-byte'])
def test_an_unreadable_last_state_is_named_with_the_previous_one(tmp_path, monkeypatch, damage):
    """A zip archive cut after its first 4 KiB made torch raise a bare ``OSError: [Errno 22] Invalid argument``;
    an empty file was named. Both are named now, with the state to resume from instead (never skipped silently)."""
    folder = tmp_path / 'experiments' / 'idc_kill' / 'training_states'
    folder.mkdir(parents=True)
    torch.save({'iter': 3, 'epoch': 0}, str(folder / '3.state'))
    torch.save({'iter': 6, 'epoch': 0, 'x': torch.arange(20000.)}, str(folder / '6.state'))
    data = (folder / '6.state').read_bytes()
    (folder / '6.state').write_bytes(data[:len(data) // 2] if damage == 'truncated' else b'')
    monkeypatch.chdir(tmp_path)
    opt = {'name': 'idc_kill', 'auto_resume': True, 'path': {}}
    with pytest.raises(ValueError) as err:
        compat._load_resume_state_cpu(opt)
    states = osp.join('experiments', 'idc_kill', 'training_states')
    last, previous = osp.join(states, '6.state'), osp.join(states, '3.state')
    assert str(err.value).startswith(f'Cannot read training state (path.resume_state) "{last}": the file is corrupt '
                                     'or truncated')
    assert str(err.value).endswith('Move it away and rerun with --auto_resume to resume from the previous state, '
                                   f'{previous} (finished units are kept).')
    cause = err.value.__cause__
    assert damage != 'truncated' or (isinstance(cause, OSError) and cause.errno == errno.EINVAL)
    os.remove(folder / '6.state')  # as the message says
    assert compat._load_resume_state_cpu(dict(opt, path={}))['iter'] == 3


# ------------------------------------------------------------------------------------------------ pickle payloads
def write_marker(path):
    """What a payload calls when unpickled: writes ``path`` (harmless, and visible)."""
    pathlib.Path(path).write_text('the payload ran')


class Payload:

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return write_marker, (self.marker, )


def make_payload(path, kind, marker):
    """A weights file whose pickle calls :func:`write_marker` (``kind``: ``torch.save`` zip, or a protocol-4
    ``pickle.dump``, which torch's weights-only reader calls ``Unsupported operand 149``)."""
    obj = {'params': Payload(str(marker))}
    if kind == 'torch.save':
        torch.save(obj, str(path))
    else:
        with open(path, 'wb') as f:
            pickle.dump(obj, f, protocol=4)
    return str(path)


def assert_refused(message, path):
    assert message.startswith('Refused pretrained weights') and f'"{path}": it is not a plain weights file: it holds ' \
        'pickled Python objects (test_write_faults.write_marker)' in message
    assert 'It was not loaded and nothing in it was run' in message
    assert 'weights_only=False' not in message and 'weights_only` set to `False' not in message


@pytest.mark.parametrize('kind', ['torch.save', 'pickle'])
def test_a_payload_is_refused_by_the_package_and_basicsrs_loader_and_never_runs(tmp_path, kind):
    marker = tmp_path / 'marker'
    with open(make_payload(tmp_path / 'live.pth', kind, tmp_path / 'live'), 'rb') as f:
        torch.load(f, weights_only=False) if kind == 'torch.save' else pickle.load(f)  # the payload is live
    assert (tmp_path / 'live').read_text() == 'the payload ran'
    path = make_payload(tmp_path / 'payload.pth', kind, marker)

    # the teachers', generators' and evaluation's loader
    with pytest.raises(ValueError) as err:
        load_network({'type': 'IMDN', 'block_type': 'imdb_ntire22', 'upscale': 4}, path)
    assert_refused(str(err.value), path)

    # BasicSR's own models (an SRModel trained on a distilled set): BaseModel.load_network
    opt = tiny_edsr_options('payload', {'type': 'PairedImageDataset'})
    opt.update(is_train=False, dist=False, rank=0, world_size=1)
    opt['path']['pretrain_network_g'] = path
    with pytest.raises(ValueError) as err:
        build_model(opt)
    assert_refused(str(err.value), path)
    assert str(err.value).startswith('Refused pretrained weights (path.pretrain_network_g)')
    assert not marker.exists()


def test_basicsrs_loader_still_loads_plain_weights_and_names_a_corrupt_file(tmp_path):
    opt = tiny_edsr_options('plain', {'type': 'PairedImageDataset'})
    opt.update(is_train=False, dist=False, rank=0, world_size=1)
    net = build_model(dict(opt, path={})).net_g
    weights = tmp_path / 'net_g.pth'
    torch.save({'params': {f'module.{k}': v + 1 for k, v in net.state_dict().items()}}, str(weights))
    opt['path']['pretrain_network_g'] = str(weights)
    loaded = build_model(opt).net_g.state_dict()
    assert all(torch.equal(loaded[k], v + 1) for k, v in net.state_dict().items())
    weights.write_bytes(weights.read_bytes()[:200])
    corrupt = r'Cannot read pretrained weights \(path.pretrain_network_g\) ".*net_g.pth": the file is corrupt'
    with pytest.raises(ValueError, match=corrupt):
        build_model(opt)


# ------------------------------------------------------------------------------------------------ torchrun
def test_a_second_torchrun_job_on_a_running_name_is_refused_naming_the_holder(tmp_path):
    """Two torchrun jobs of 2 processes each (gloo, CPU) on one experiment name: the second stops at once, every
    rank, naming rank 0 of the first; the first (held by SIGSTOP meanwhile) finishes its set, nothing archived."""
    opt = idc_run(tmp_path)
    cwd = str(tmp_path / 'run')
    first = start_run(opt, cwd, nproc=2)
    second = None
    held = []
    try:
        wait_for(first, logged(1), 'its first iteration')
        held = [first.pid] + descendants(first.pid)
        for pid in held:
            os.kill(pid, signal.SIGSTOP)
        with open(osp.join(cwd, 'experiments', 'idc_kill', run_lock.LOCK_NAME)) as f:
            holder = json.load(f)['pid']
        assert holder in held and holder != first.pid  # rank 0 of the first job holds the lock
        second = start_run(opt, cwd, nproc=2)
        out = failed(second)
        for pid in held:
            os.kill(pid, signal.SIGCONT)
        finish(first)
    finally:
        for pid in held:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stop_group(first)
        if second is not None:
            stop(second)
    exp = osp.join(cwd, 'experiments', 'idc_kill')
    text = (f"RunLockedError: Output folder {exp} (the experiment folder of option name='idc_kill') is in use by "
            f'another run: process {holder} on host {socket.gethostname()}, started 20')
    assert text in out and '(found by rank 0)' in out
    assert 'Path already exists' not in out and os.listdir(osp.join(cwd, 'experiments')) == ['idc_kill']
    manifest = validate_distilled_set(osp.join(cwd, 'distilled'), scale=4, require_complete=True, check_contents=True)
    assert manifest['units_finished'] == ['t20', 'tiny', 'tt27'] and manifest['world_size'] == 2
    assert not [f for f in listing(cwd) if osp.basename(f) == run_lock.LOCK_NAME]

"""One run per output folder (``basicsr_distill/utils/run_lock.py``): locks, write access, failed starts.

End to end, ``basicsr_distill/train.py`` runs as a subprocess on the tiny IDC option file of test_kill_resume.py
(``distilled_root: distilled`` under the run's folder, 3 instances x 8 iterations, about 8 s a run on 2 shared CPU
cores, most of it interpreter start-up):

- a second run with the same ``name`` (or another name on the same ``distilled_root``, or two ranks under torchrun)
  while the first is running (held by SIGSTOP so that the timing is not a race) stops at once naming the holder, and
  the first finishes its set in its own, never archived, experiment folder;
- SIGKILL after a training state, then ``--auto_resume``: the stale locks are taken over (logged, naming the killed
  process) and the set is completed; no lock file is left;
- a failed start (a bad option found while the model is built) leaves no folder it created, keeps the folders that
  existed and gives back an experiment folder it archived;
- a folder made unusable mid-run (``distilled/hr`` replaced by a file, as root ignores read-only permissions) stops
  the run naming the folder; the units written before are intact and ``--auto_resume`` completes the set.

In-process: the lock itself (a live holder refused, a stale lock file taken over), and write access at start-up:
the tests run as root here, where ``chmod`` does not stop writes, so an unwritable folder is simulated by replacing
``run_lock.is_writable`` (the one place the permission is asked), and a file in place of a folder is real.
The module takes about 90 s on 2 shared CPU cores.
"""
import json
import os
import os.path as osp
import pathlib
import pytest
import signal
import socket
import subprocess
import sys

import basicsr_distill  # noqa: F401

# isort: split
from conftest import (assert_complete, failed, finish, idc_run, listing, logged, start_run, state_iters, stop,
                      train_in_process, wait_for, write_option_file)

from basicsr_distill.distilled_set import validate_distilled_set
from basicsr_distill.utils import run_lock
from basicsr_distill.utils.run_lock import LOCK_NAME, FolderLock, RunLockedError

# ------------------------------------------------------------------------------------------------ helpers


def hold_lock(folder):
    """A child process holding :class:`FolderLock` on ``folder`` until killed."""
    code = ('import sys; from basicsr_distill.utils.run_lock import FolderLock; '
            f'FolderLock({folder!r}, "x").acquire(); print("locked", flush=True); sys.stdin.read()')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    holder = subprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert holder.stdout.readline().strip() == b'locked'
    return holder


def lock_files(folder):
    return [f for f in listing(folder) if osp.basename(f) == LOCK_NAME]


# ------------------------------------------------------------------------------------------------ the lock
def test_folder_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    folder = str(tmp_path / 'out')
    holder = hold_lock(folder)
    try:
        with pytest.raises(RunLockedError) as err:
            FolderLock(folder, 'option path.distilled_root', 'Pick another one.').acquire()
        text = str(err.value)
        assert f'{folder} (option path.distilled_root) is in use by another run: process {holder.pid} on host ' \
               f'{socket.gethostname()}, started 20' in text and text.endswith('Pick another one.')
    finally:
        holder.kill()  # SIGKILL: its lock file stays, the kernel drops the flock
        holder.wait()
    assert json.loads(pathlib.Path(folder, LOCK_NAME).read_text())['pid'] == holder.pid
    lock = FolderLock(folder, 'option path.distilled_root').acquire()
    assert f'took over the stale lock of process {holder.pid} on host {socket.gethostname()}' in lock.takeover_text()
    assert json.loads(pathlib.Path(folder, LOCK_NAME).read_text())['pid'] == os.getpid()
    lock.release()
    assert os.listdir(folder) == []  # released: the lock file is removed
    again = FolderLock(folder, 'x').acquire()  # no takeover after a clean release
    assert again.takeover_text() is None
    again.release()


# ------------------------------------------------------------------------------------------------ two runs at once
def test_a_second_run_on_the_same_folders_is_refused_and_the_first_finishes(tmp_path):
    cwd = str(tmp_path / 'run')
    first = start_run(idc_run(tmp_path), cwd)
    others = []
    try:
        wait_for(first, logged(1), 'its first iteration')
        os.kill(first.pid, signal.SIGSTOP)  # holds its locks, computes nothing while the others start
        others = [
            start_run(idc_run(tmp_path), cwd),  # same name
            start_run(idc_run(tmp_path, name='idc_other'), cwd, '--auto_resume'),  # another name, same distilled_root
            start_run(idc_run(tmp_path), cwd, nproc=2)  # two ranks: rank 0 is refused, rank 1 stops with it
        ]
        same_name, same_root, two_ranks = [failed(p) for p in others]
        os.kill(first.pid, signal.SIGCONT)
        finish(first)
    finally:
        stop(first, *others)
    holder = f'is in use by another run: process {first.pid} on host {socket.gethostname()}, started 20'
    exp = osp.join(cwd, 'experiments', 'idc_kill')
    what = "the experiment folder of option name='idc_kill'"
    assert f'RunLockedError: Output folder {exp} ({what}) {holder}' in same_name
    assert f'Output folder {osp.join(cwd, "distilled")} (option path.distilled_root) {holder}' in same_root
    assert holder in two_ranks and '(found by rank 0)' in two_ranks
    assert 'Path already exists' not in same_name + two_ranks  # nothing archived
    assert sorted(os.listdir(osp.join(cwd, 'experiments'))) == ['idc_kill']  # no idc_other, no idc_kill_archived_*
    assert_complete(cwd)
    assert state_iters(cwd, 'idc_kill') == [3, 6, 9, 12, 15, 18, 21, 24]  # the first run's states, in its folder
    assert not lock_files(cwd)


# ------------------------------------------------------------------------------------------------ kill, resume
def test_auto_resume_after_a_kill_takes_over_the_stale_locks(tmp_path):
    cwd = str(tmp_path / 'run')
    proc = start_run(idc_run(tmp_path), cwd)
    try:
        wait_for(proc, lambda p: state_iters(cwd, 'idc_kill'), 'its first training state')
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.log_file.close()
        killed = proc.pid
        assert sorted(
            lock_files(cwd)) == [osp.join('distilled', LOCK_NAME),
                                 osp.join('experiments', 'idc_kill', LOCK_NAME)]
        proc = start_run(idc_run(tmp_path), cwd, '--auto_resume')
        finish(proc)
    finally:
        stop(proc)
    with open(proc.log_file.name) as f:
        out = f.read()
    for folder in (osp.join(cwd, 'experiments', 'idc_kill'), osp.join(cwd, 'distilled')):
        assert f'{folder} (' in out and f'took over the stale lock of process {killed} on host' in out
    assert 'Resuming training from epoch' in out and 'Path already exists' not in out
    assert_complete(cwd)
    assert not lock_files(cwd)


# ------------------------------------------------------------------------------------------------ write access


@pytest.mark.parametrize('where', ['distilled_root', 'experiments'])
def test_an_unwritable_output_folder_is_refused_at_start_up_naming_it(tmp_path, monkeypatch, where):
    cwd = str(tmp_path / 'run')
    os.makedirs(osp.join(cwd, 'out'))
    opt = idc_run(tmp_path)
    opt['path']['distilled_root'] = 'out/distilled'
    blocked = osp.join(cwd, 'out' if where == 'distilled_root' else '')
    monkeypatch.setattr(run_lock, 'is_writable', lambda path: path.rstrip('/') != blocked.rstrip('/'))
    with pytest.raises(PermissionError) as err:
        train_in_process(opt, cwd, monkeypatch)
    what = ('option path.distilled_root'
            if where == 'distilled_root' else "the experiment folder of option name='idc_kill'")
    folder = osp.join(cwd, 'out', 'distilled') if where == 'distilled_root' else osp.join(
        cwd, 'experiments', 'idc_kill')
    assert str(err.value).startswith(f'Output folder {folder} ({what}) cannot be created: {blocked.rstrip("/")} is not '
                                     'writable by this user.')
    assert sorted(os.listdir(cwd)) == ['idc_kill.yml', 'out'] and os.listdir(osp.join(cwd, 'out')) == []


def test_a_file_in_place_of_an_output_folder_is_refused_at_start_up(tmp_path, monkeypatch):
    cwd = str(tmp_path / 'run')
    os.makedirs(cwd)
    pathlib.Path(cwd, 'distilled').write_text('not a folder')
    with pytest.raises(
            NotADirectoryError,
            match=r'Output folder .*/run/distilled \(option path.distilled_root\) '
            r'cannot be created: .*/run/distilled is a file, not a folder'):
        train_in_process(idc_run(tmp_path), cwd, monkeypatch)
    assert sorted(os.listdir(cwd)) == ['distilled', 'idc_kill.yml']  # no experiments/ made


# ------------------------------------------------------------------------------------------------ failed start
def test_a_failed_start_leaves_no_folder_it_created_and_keeps_the_others(tmp_path):
    bad = idc_run(tmp_path)
    bad['distill']['ratio'] = -0.1  # refused while the model is built, after the folders and the log were made
    fresh, used = str(tmp_path / 'fresh'), str(tmp_path / 'used')
    old_exp = osp.join(used, 'experiments', 'idc_kill')
    os.makedirs(old_exp)
    pathlib.Path(old_exp, 'train_idc_kill_old.log').write_text('an earlier run')
    os.makedirs(osp.join(used, 'distilled'))
    pathlib.Path(used, 'distilled', 'notes.txt').write_text('the user\'s')
    procs = [start_run(bad, fresh), start_run(bad, used)]
    try:
        outs = [failed(p) for p in procs]
    finally:
        stop(*procs)
    for out in outs:
        assert 'ValueError: distill.ratio (r) must be in (0, 1], got -0.1' in out
    assert 'Start-up failed: removed what this run had created' in outs[0]
    assert sorted(os.listdir(fresh)) == ['idc_kill.yml', 'run_0.log']  # no experiments/, no distilled/
    assert sorted(os.listdir(used)) == ['distilled', 'experiments', 'idc_kill.yml', 'run_0.log']
    assert os.listdir(osp.join(used, 'experiments')) == ['idc_kill']  # archived at start-up, then given back
    assert os.listdir(old_exp) == ['train_idc_kill_old.log']
    assert os.listdir(osp.join(used, 'distilled')) == ['notes.txt']  # existed: kept, no lock file left


# ------------------------------------------------------------------------------------------------ mid-run failure
def test_an_output_folder_that_fails_mid_run_is_named_and_nothing_written_is_lost(tmp_path):
    cwd = str(tmp_path / 'run')
    hr = osp.join(cwd, 'distilled', 'hr')
    proc = start_run(idc_run(tmp_path), cwd)
    try:
        wait_for(proc, logged(10), 't20 and tiny written')  # tt27 is written at iteration 24
        os.kill(proc.pid, signal.SIGSTOP)
        os.rename(hr, hr + '_away')
        pathlib.Path(hr).write_text('not a folder')  # root ignores chmod: a file in the way fails the writes
        os.kill(proc.pid, signal.SIGCONT)
        out = failed(proc)
    finally:
        stop(proc)
    assert f'Writing to {hr} (option path.distilled_root) failed: ' in out
    assert 'Nothing already written there is lost or corrupted' in out and 'rerun with --auto_resume' in out
    os.remove(hr)
    os.rename(hr + '_away', hr)
    manifest = validate_distilled_set(osp.join(cwd, 'distilled'), scale=4, check_contents=True)
    assert manifest['units_finished'] == ['t20', 'tiny']  # intact
    assert not lock_files(cwd)
    proc = start_run(idc_run(tmp_path), cwd, '--auto_resume')
    try:
        finish(proc)
    finally:
        stop(proc)
    assert_complete(cwd)


# ------------------------------------------------------------------------------------------------ experiment name
@pytest.mark.parametrize('name', ['..', '.', 'a/b', '/tmp/elsewhere', '', 'a\tb', 5])
@pytest.mark.parametrize('forced', [False, True])
def test_an_experiment_name_that_is_not_one_plain_folder_is_refused_before_anything_moves(
        tmp_path, monkeypatch, name, forced):
    cwd = str(tmp_path / 'repo')
    os.makedirs(osp.join(cwd, 'experiments', 'kept'))
    pathlib.Path(cwd, 'mine.txt').write_text('the user\'s')
    opt = idc_run(tmp_path)
    extra = []
    if forced:  # --force_yml name=<value>, as the issue found it (BasicSR applies it after reading the file)
        extra = ['--force_yml', f'name={name}']
    else:
        opt['name'] = name
    path = write_option_file(opt, pathlib.Path(cwd, 'opt.yml'))
    before = listing(str(tmp_path))
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, 'argv', ['basicsr_distill/train.py', '-opt', path, *extra])
    with pytest.raises(ValueError, match=r'option name=.* the experiment name must be one plain folder name'):
        run_lock.guarded_train_pipeline(cwd)
    assert listing(str(tmp_path)) == before  # the repository, experiments/ and the files in them stay where they were
    assert sorted(os.listdir(tmp_path)) == ['data', 'repo']


def test_a_test_run_name_is_checked_and_a_live_runs_folder_is_never_archived(tmp_path, monkeypatch):
    cwd = str(tmp_path / 'repo')
    opt = {
        'name': '..',
        'model_type': 'SRModel',
        'scale': 4,
        'num_gpu': 0,
        'datasets': {
            'test_1': {
                'name': 'x',
                'type': 'PairedImageDataset',
                'dataroot_gt': 'gt',
                'dataroot_lq': 'lq',
                'io_backend': {
                    'type': 'disk'
                }
            }
        },
        'network_g': {
            'type': 'MSRResNet',
            'num_feat': 8,
            'num_block': 1,
            'upscale': 4
        },
        'path': {
            'pretrain_network_g': None
        },
        'val': {
            'save_img': False
        }
    }
    os.makedirs(cwd)
    path = write_option_file(opt, pathlib.Path(cwd, 'test.yml'))
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, 'argv', ['basicsr_distill/test.py', '-opt', path])
    with pytest.raises(ValueError, match=r"option name='\.\.' names the current or the parent folder"):
        run_lock.guarded_test_pipeline(cwd)
    assert os.listdir(tmp_path) == ['repo'] and os.listdir(cwd) == ['test.yml']
    # results/<name> holding the distilled_root of a live run: BasicSR would archive it under the run's feet
    live = osp.join(cwd, 'results', 'bench', 'distilled')
    holder = hold_lock(live)
    try:
        monkeypatch.setattr(sys, 'argv', ['basicsr_distill/test.py', '-opt', path, '--force_yml', 'name=bench'])
        with pytest.raises(RunLockedError, match=f'a live run writes inside it: process {holder.pid} on host'):
            run_lock.guarded_test_pipeline(cwd)
        assert os.listdir(osp.join(cwd, 'results')) == ['bench'] and os.listdir(live) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()


def test_an_experiment_folder_holding_a_live_runs_folder_is_never_archived(tmp_path, monkeypatch):
    cwd = str(tmp_path / 'run')
    live = osp.join(cwd, 'experiments', 'idc_kill', 'other_distilled')  # another run's path.distilled_root
    holder = hold_lock(live)
    try:
        with pytest.raises(RunLockedError, match=f'a live run writes inside it: process {holder.pid} on host'):
            train_in_process(idc_run(tmp_path), cwd, monkeypatch)
        assert os.listdir(osp.join(cwd, 'experiments')) == ['idc_kill']  # not archived
        assert os.listdir(osp.join(cwd, 'experiments', 'idc_kill')) == ['other_distilled']  # our lock file removed
        assert os.listdir(live) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its stale lock file no longer stops the archive
    assert run_lock.held_locks_under(osp.join(cwd, 'experiments')) == []

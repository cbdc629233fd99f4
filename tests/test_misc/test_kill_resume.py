"""SIGKILL a real distillation part way, rerun it with ``--auto_resume``: the uninterrupted set, byte for byte.

For each method, ``basicsr_distill/train.py`` runs as a subprocess (cwd = a temporary folder, since BasicSR's
``--auto_resume`` looks for ``experiments/<name>`` in the current directory) on tiny option files with real images.
The test watches the file system (the run's log, its training states, the distilled set's ``hr/``) and kills the
run with SIGKILL at the moments of :func:`kill_plan` (inside a unit after its state; after a unit was written but
before the next state; before the first state, so that BasicSR archives the experiment folder; while a unit's pairs
are being written; after Minimax-SR's stage 2 was saved), each time rerunning with ``--auto_resume``, until a rerun
exits 0. An uninterrupted run of the same options runs alongside in another folder; both sets must have the same
pair names, byte-identical ``hr/``, ``lr/``, ``lr_float/`` files, equal ``meta_info.txt``, complete manifests with
the same pairs, and no temporary or extra file anywhere.

Slow-safe: the module takes 50-80 s on 2 shared CPU cores (one thread per process, tiny networks; most of the time
is interpreter start-up, 3-4 processes in a row per method).
"""
import json
import os
import os.path as osp
import pytest
import random
import signal
import time
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import OPTIONS, RUN_TIMEOUT, assert_same_set, finish, logged, start_run, state_iters, stop

# ------------------------------------------------------------------------------------------------ processes


def kill_when(proc, condition, delay=0.0, what=''):
    """SIGKILL ``proc`` ``delay`` seconds after ``condition(proc)`` first holds (polled every 2 ms).

    Returns:
        bool: True if the kill stopped the run, False if it had already exited 0 (then there is nothing to kill).
    """
    deadline = time.monotonic() + RUN_TIMEOUT
    while not condition(proc):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            proc.log_file.close()
            with open(proc.log_file.name) as f:
                pytest.fail(f'the run ended (rc {proc.returncode}) before the kill moment ({what}):\n'
                            f'{f.read()[-3000:]}')
        time.sleep(0.002)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.log_file.close()
    return proc.returncode == -signal.SIGKILL


def writing(cwd, prefix):
    """A file of a pair named ``prefix*`` exists in hr/ (final or temporary name): that unit is being written."""
    folder = osp.join(cwd, 'distilled', 'hr')
    return lambda proc: osp.isdir(folder) and any(prefix in f for f in os.listdir(folder))


# ------------------------------------------------------------------------------------------------ comparison


def assert_same_stage2(a, b):
    """Minimax-SR: the same fine-tuned DiffFit tensors (trained and EMA) and the same stage-1 selection."""
    sa = torch.load(osp.join(a, 'distilled_work', 'stage2_difffit.pth'), weights_only=True)
    sb = torch.load(osp.join(b, 'distilled_work', 'stage2_difffit.pth'), weights_only=True)
    for part in ('trainable', 'ema'):
        assert sa[part].keys() == sb[part].keys()
        for name in sa[part]:
            assert torch.equal(sa[part][name], sb[part][name]), (part, name)
    selections = []
    for x in (a, b):
        with open(osp.join(x, 'distilled_work', 'stage1_selection.json')) as f:
            selections.append(json.load(f)['patches'])
    assert selections[0] == selections[1]


# ------------------------------------------------------------------------------------------------ the test
def kill_plan(method, cwd, rng):
    """The kill moments of each method, in order: (condition, seeded delay in s, what it exercises)."""
    if method == 'idc':  # T = 8, states every 3 iterations; t20 = 1..8, tiny (empty unit) = 9..16, tt27 = 17..24
        return [(logged(8), rng.uniform(0, 0.02), 't20 written at 8, last state 6 (inside t20) or 9 (no unit)'),
                (writing(cwd, 'tt27_idc'), 0.0, 'half of tt27\'s 34 pairs written, last state 21 (inside tt27)')]
    if method == 'idc_batched':  # T = 8, states every 3; t20 and tt27 optimised together at 1..8 (tiny written at 1)
        return [(logged(4), rng.uniform(0, 0.02), 'inside the batch t20 + tt27, last state 3'),
                (writing(cwd, 'tt27_idc'), 0.0, 't20 written, half of tt27 written at 8, last state 6 (inside both)')]
    if method == 'gsdd':  # 4 iterations per class, one state at 5; bsd = 1..4, tt = 5..8
        return [(logged(4), 0.0, 'bsd written, no state yet: the experiment folder is archived, bsd kept'),
                (logged(6), rng.uniform(0, 0.05), 'inside tt, last state 5 (inside tt)')]
    # minimax: stage 1 = 1, stage 2 = 2..5, stage 3 = 6 (pseudo0), 7 (pseudo1); states every 2
    return [(logged(3), rng.uniform(0, 0.05), 'inside stage 2, last state 2 or 4 (inside stage 2)'),
            (logged(5), 0.0, 'stage 2 saved at 5 after the last state 4 (inside stage 2)'),
            (writing(cwd, 'pseudo1_minimax'), 0.0, 'pseudo1 half written, last state 6')]


@pytest.mark.parametrize('method', ['idc', 'idc_batched', 'gsdd', 'minimax'])
def test_sigkill_then_auto_resume_gives_the_uninterrupted_set(tmp_path, method):
    data = str(tmp_path / 'data')
    opt = OPTIONS[method](data)
    straight_dir, killed_dir = str(tmp_path / 'straight'), str(tmp_path / 'killed')
    rng = random.Random(f'{method}-kill')  # the delays after each kill condition
    straight = start_run(opt, straight_dir)  # alongside: two processes on two cores
    proc = start_run(opt, killed_dir)
    landed = []
    try:
        for condition, delay, what in kill_plan(method, killed_dir, rng):
            landed.append(kill_when(proc, condition, delay, what))
            print(f'{method}: killed={landed[-1]} ({what}); states {state_iters(killed_dir, opt["name"])}')
            proc = start_run(opt, killed_dir, '--auto_resume')
            if not landed[-1]:  # the run had just ended (a very slow poll): the rerun must keep the finished set
                break
        finish(proc)
        finish(straight)
    finally:
        stop(straight, proc)
    assert landed[0], 'the first kill came after the end of the run'
    assert_same_set(straight_dir, killed_dir)
    if method == 'minimax':
        assert_same_stage2(straight_dir, killed_dir)


def test_stage1_temporary_file_left_by_a_sigkill_is_removed_by_the_next_write(tmp_path):
    """A SIGKILL between mkstemp and os.replace leaves ``.stage1_selection.json.<random>.tmp``; the rerun (which
    recomputes stage 1, since the selection file is missing) removes it."""
    from basicsr_distill.data.patch_selection import load_selection, save_selection
    path = tmp_path / 'stage1_selection.json'
    stale = tmp_path / '.stage1_selection.json.k1ll3d.tmp'
    stale.write_text('{"format": "half wri')
    other = tmp_path / '.other.json.k1ll3d.tmp'  # another file's temporary: not ours to remove
    other.write_text('')
    records = [{'path': 'a.png', 'y': 0, 'x': 0, 'size': 64, 'psnr_bic': 20.5}]
    save_selection(str(path), records, [0], {'options': {}})
    assert sorted(os.listdir(tmp_path)) == sorted([other.name, path.name])
    assert load_selection(str(path))['records'] == records

"""Multi-process distillation: ``torchrun --nproc_per_node=2 ... --launcher pytorch`` (gloo on the CPU).

End to end, ``basicsr_distill/train.py`` runs under ``python -m torch.distributed.run --standalone`` (a free
rendezvous port per run) on the tiny option files of test_kill_resume.py, and its set is compared with a single
process run of the same options and seed, both one thread per process:

- IDC (4 instances, one of them smaller than a patch) and GSDD (2 classes): byte-identical pair files and
  ``meta_info.txt``; the manifests equal except timestamps, wall time, ``world_size`` and the run bookkeeping in
  ``options`` (``HASH_IGNORED_KEYS``: ``dist``, ``world_size``, ``auto_resume``, paths, ...). Every unit is computed
  from generators seeded by (seed, unit), so the rank that computes it does not matter.
- Minimax-SR (stage 2 under DistributedDataParallel, batch 2 = 1 per process): the same stage-1 selection, pair
  names, manifest pairs (labels, seeds, shapes) and stage-2 losses; the first step's gradient equal up to float
  summation order (Adam's ``exp_avg`` = 0.1 g after one step, within 1e-5 of its largest entry); the sampled images
  within 1e-4 (float LR) and one 8-bit level (PNGs): Adam's normalisation turns the last-bit differences of the
  all-reduced gradient into differences of ~1e-5 in the DiffFit tensors.
- SIGKILL of a 2-process IDC run inside a unit (after a training state; units finished on both ranks, one of them
  only in rank 1's shard), rerun with ``--auto_resume``: the single-process set, finished units untouched, no
  shard or temporary file left.

Plus in-process checks of the shard writer, the iteration -> unit map and the compat fix (gloo without CUDA).
The module takes about 60-80 s on 2 CPU cores (interpreter and torchrun start-up dominate).
"""
import cv2
import json
import numpy as np
import os
import os.path as osp
import pytest
import socket
import subprocess
import sys
import time
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import (OPTIONS, RUN_TIMEOUT, copy_images, finish, leftovers, listing, start_run, state_iters, stop,
                      stop_group)

from basicsr_distill import compat
from basicsr_distill.distilled_set import (HASH_IGNORED_KEYS, DistilledSetWriter, pending_shards, read_manifest,
                                           shard_path, validate_distilled_set)
from basicsr_distill.models.distill_base_model import DistillBaseModel

# manifest fields that differ between a 1- and a 2-process run of the same options
VOLATILE = ('created', 'updated', 'wall_time_s', 'world_size', 'options')


# ------------------------------------------------------------------------------------------------ option files
def idc4_options(data):
    """IDC with 4 instances (t20, t9, tiny, tt27): rank 0 gets t20 and tiny, rank 1 t9 and tt27 (the long one)."""
    opt = OPTIONS['idc'](data)
    hr = opt['datasets']['train']['dataroot_gt']
    if not osp.isfile(osp.join(hr, 't9.png')):
        copy_images(hr, ['t9.png'])
    opt['name'] = 'idc_mp'
    opt['train']['total_iter'] = 4 * opt['distill']['iters_per_instance']  # one process's need; 2 need half
    return opt


def run_options(method, data):
    if method == 'idc':
        return idc4_options(data)
    opt = OPTIONS[method](data)
    opt['name'] = f'{method}_mp'
    return opt


# ------------------------------------------------------------------------------------------------ processes
def start_torchrun(opt, cwd, *extra, nproc=2):
    """:func:`start_run` under ``torchrun`` with ``nproc`` processes (``--launcher pytorch``, own process group)."""
    return start_run(opt, cwd, *extra, nproc=nproc)


def kill_group_when(proc, condition, delay, what):
    """SIGKILL torchrun and every rank ``delay`` s after ``condition()`` first holds (polled every 2 ms)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_group(proc)
            with open(proc.log_file.name) as f:
                pytest.fail(f'the run ended (rc {proc.returncode}) before the kill moment ({what}):\n'
                            f'{f.read()[-3000:]}')
        time.sleep(0.002)
    time.sleep(delay)
    stop_group(proc)


# ------------------------------------------------------------------------------------------------ comparison
def _manifest_core(manifest):
    core = {k: v for k, v in manifest.items() if k not in VOLATILE}
    core['options'] = {k: v for k, v in manifest['options'].items() if k not in HASH_IGNORED_KEYS}
    core['pairs'] = [{k: v for k, v in p.items() if k != 'sha256'} for p in manifest['pairs']]  # files compared below
    return core


def assert_same_set_any_world(one, two, exact=True):
    """The sets under ``one/distilled`` (1 process) and ``two/distilled`` (2 processes) are the same set.

    ``exact``: byte-identical files; otherwise (Minimax-SR) HR / LR PNGs within one 8-bit level and the float LR
    within 1e-4. Either way the same file names, the same manifest apart from :data:`VOLATILE` (pairs and units in
    the same order), no shard and no temporary file.
    """
    ra, rb = osp.join(one, 'distilled'), osp.join(two, 'distilled')
    ma = validate_distilled_set(ra, scale=4, require_complete=True, check_contents=True)
    mb = validate_distilled_set(rb, scale=4, require_complete=True, check_contents=True)
    assert (ma['world_size'], mb['world_size']) == (1, 2)
    assert _manifest_core(ma) == _manifest_core(mb)
    assert listing(ra) == listing(rb)
    assert not pending_shards(rb) and not leftovers(one) and not leftovers(two), (leftovers(one), leftovers(two))
    for rel in listing(ra):
        if rel == 'distill.json':
            continue
        with open(osp.join(ra, rel), 'rb') as fa, open(osp.join(rb, rel), 'rb') as fb:
            da, db = fa.read(), fb.read()
        if exact or rel == 'meta_info.txt':
            assert da == db, rel
        elif rel.endswith('.npy'):
            np.testing.assert_allclose(np.load(osp.join(ra, rel)), np.load(osp.join(rb, rel)), rtol=0, atol=1e-4)
        else:
            ia, ib = (cv2.imread(osp.join(r, rel)).astype(np.int16) for r in (ra, rb))
            assert np.abs(ia - ib).max() <= 1, rel


def _logged_losses(cwd):
    """Stage-2 loss lines of rank 0's log (the text after ``lr:(...)]`` of every logged iteration)."""
    lines = []
    for name in sorted(f for f in os.listdir(cwd) if f.startswith('run_')):
        with open(osp.join(cwd, name)) as f:
            lines += [line.split('] ', 2)[-1].strip() for line in f if ' l_simple: ' in line]
    return lines


def assert_same_minimax_training(one, two):
    """Stage 1 identical; every stage-2 loss identical at the log's precision; the first step's gradient equal up
    to float summation order (and identical on both ranks)."""
    sel = []
    for cwd in (one, two):
        with open(osp.join(cwd, 'distilled_work', 'stage1_selection.json')) as f:
            selection = json.load(f)
        selection['meta'].pop('seconds')
        sel.append(selection)
    assert sel[0] == sel[1]
    assert _logged_losses(one) == _logged_losses(two) and len(_logged_losses(one)) >= 4
    # iteration 2 = stage-2 step 1 (states every 2 iterations): Adam's exp_avg is 0.1 x the step's gradient
    s1 = torch.load(osp.join(one, 'experiments', 'minimax_mp', 'training_states', '2.state'), weights_only=True)
    s2 = torch.load(osp.join(two, 'experiments', 'minimax_mp', 'training_states', '2.state'), weights_only=True)
    assert s2['world_size'] == 2 and s1.get('world_size', 1) == 1
    g1 = s1['unit_state']['optimizer']['state']
    g2, g2_rank1 = (s['optimizer']['state'] for s in s2['unit_states'])
    scale = max(float(v['exp_avg'].abs().max()) for v in g1.values())
    for key in g1:
        assert torch.equal(g2[key]['exp_avg'], g2_rank1[key]['exp_avg'])  # the all-reduced gradient, everywhere
        assert float((g1[key]['exp_avg'] - g2[key]['exp_avg']).abs().max()) <= 1e-5 * scale, key


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize('method', ['idc', 'gsdd', 'minimax'])
def test_two_processes_give_the_single_process_set(tmp_path, method):
    opt = run_options(method, str(tmp_path / 'data'))
    one_dir, two_dir = str(tmp_path / 'one'), str(tmp_path / 'two')
    one = start_run(opt, one_dir)  # alongside: 3 processes on 2 cores
    two = start_torchrun(opt, two_dir)
    try:
        finish(two)
        finish(one)
    finally:
        stop(one)
        stop_group(two)
    assert_same_set_any_world(one_dir, two_dir, exact=method != 'minimax')
    with open(two.log_file.name) as f:
        log = f.read()
    assert 'Merged 1 shard(s)' in log  # rank 1's units reached distill.json through its shard
    if method == 'idc':
        assert 'each needs 16 of train.total_iter=32 iterations' in log
    if method == 'minimax':
        assert_same_minimax_training(one_dir, two_dir)
    # only rank 0 writes training states: one file per saved iteration, holding every rank's unit
    states = torch.load(
        osp.join(two_dir, 'experiments', opt['name'], 'training_states',
                 f'{state_iters(two_dir, opt["name"])[0]}.state'),
        weights_only=True)
    assert states['world_size'] == 2 and len(states['unit_states']) == 2


def test_sigkill_of_two_processes_then_auto_resume_gives_the_single_process_set(tmp_path):
    opt = idc4_options(str(tmp_path / 'data'))
    one_dir, two_dir = str(tmp_path / 'one'), str(tmp_path / 'two')
    root = osp.join(two_dir, 'distilled')
    one = start_run(opt, one_dir)
    proc = start_torchrun(opt, two_dir)
    try:
        # T = 8, states every 3 local iterations; rank 0: t20 = 1..8, tiny = 9 (empty unit); rank 1: t9 = 1..8,
        # tt27 = 9..16. The state of iteration 12 exists: every rank is past 12, rank 1 inside tt27.
        kill_group_when(proc, lambda: 12 in state_iters(two_dir, opt['name']), 0.05, 'rank 1 inside tt27')
        manifest = validate_distilled_set(root, scale=4)  # what the kill left is a valid (incomplete) set
        assert manifest['units_finished'] == ['t20', 'tiny'] and not manifest['complete']
        with open(shard_path(root, 1)) as f:
            assert json.load(f)['units_finished'] == ['t9']  # rank 1's finished unit, in its shard only
        with pytest.raises(ValueError, match='not merged yet'):
            validate_distilled_set(root, require_complete=True)
        written = {
            f: os.stat(osp.join(root, 'hr', f)).st_mtime_ns
            for f in os.listdir(osp.join(root, 'hr')) if f.startswith(('t20_', 't9_'))
        }
        proc = start_torchrun(opt, two_dir, '--auto_resume')
        finish(proc)
        finish(one)
    finally:
        stop(one)
        stop_group(proc)
    assert_same_set_any_world(one_dir, two_dir)
    assert {f: os.stat(osp.join(root, 'hr', f)).st_mtime_ns for f in written} == written  # never recomputed
    with open(proc.log_file.name) as f:
        log = f.read()
    assert 'Resuming training from epoch' in log and '1 merged from shards' in log


# ------------------------------------------------------------------------------------------------ in process
def _pair(name, value, size=4, scale=4):
    lq = np.full((size, size, 3), value, np.float32)
    return {
        'name': name,
        'lq': lq,
        'gt': np.full((size * scale, size * scale, 3), value, np.float32),
        'info': {
            'value': value
        }
    }


def _writer(root, **kwargs):
    return DistilledSetWriter(
        root,
        method='toy',
        scale=4,
        source={'folder': 'x'},
        size_control={'ipc': 1},
        options={'a': 1},
        unit_order=['u0', 'u1', 'u2', 'u3'],
        **kwargs)


def test_shards_merge_into_the_single_writer_manifest(tmp_path):
    single = _writer(str(tmp_path / 'single'))
    for i in range(4):
        single.write_unit(f'u{i}', [_pair(f'u{i}_p{j}', (i + j) / 8) for j in range(2)])
    single.finalize()

    root = str(tmp_path / 'multi')
    rank0 = _writer(root, world_size=2)
    rank1 = _writer(root, world_size=2, shard=1)
    for i in (3, 1):  # rank 1 first, in reverse order
        rank1.write_unit(f'u{i}', [_pair(f'u{i}_p{j}', (i + j) / 8) for j in range(2)])
    for i in (2, 0):
        rank0.write_unit(f'u{i}', [_pair(f'u{i}_p{j}', (i + j) / 8) for j in range(2)])
    assert read_manifest(root)['units_finished'] == ['u0', 'u2']  # rank 1's units are in its shard only
    assert rank1.is_finished('u1') and not rank1.is_finished('u0') and rank0.is_finished('u0')
    with pytest.raises(RuntimeError, match='rank 0'):
        rank1.finalize()
    with pytest.raises(ValueError, match="already used by unit 'u3'"):
        rank1.write_unit('u5', [_pair('u3_p0', 0.5)])
    assert rank0.merge_shards() == ['u1', 'u3'] and not pending_shards(root)
    rank0.finalize()
    a, b = read_manifest(str(tmp_path / 'single')), read_manifest(root)
    assert {k: v for k, v in a.items() if k not in VOLATILE} == {k: v for k, v in b.items() if k not in VOLATILE}
    assert b['units_finished'] == ['u0', 'u1', 'u2', 'u3'] and b['world_size'] == 2
    for rel in listing(str(tmp_path / 'single')):
        if rel != 'distill.json':
            assert open(tmp_path / 'single' / rel, 'rb').read() == open(osp.join(root, rel), 'rb').read(), rel


def test_a_shard_left_by_a_crash_is_merged_when_rank0_reopens(tmp_path):
    root = str(tmp_path / 'set')
    _writer(root, world_size=2).write_unit('u0', [_pair('u0_p0', 0.1)])
    rank1 = _writer(root, world_size=2, shard=1)
    with pytest.raises(ValueError, match='already listed'):
        rank1.write_unit('u0', [_pair('u0_x', 0.5)])
    rank1.write_unit('u1', [_pair('u1_p0', 0.2)])  # then the run is killed
    with pytest.raises(RuntimeError, match='merges it when it opens'):
        _writer(root, world_size=2, shard=1)  # rank 0 must open (and merge) first
    reopened = _writer(root)  # any number of processes: here a single one
    assert reopened.finished_units == ['u0', 'u1'] and not pending_shards(root)
    assert validate_distilled_set(root)['units_finished'] == ['u0', 'u1']
    # a shard of another run is refused, naming it
    foreign = shard_path(root, 3)
    with open(foreign, 'w') as f:
        json.dump(
            {
                'format': 'basicsr_distill.distilled_set.shard',
                'rank': 3,
                'method': 'toy',
                'scale': 4,
                'size_control': {
                    'ipc': 1
                },
                'options_hash': '0' * 64,
                'units_finished': [],
                'pairs': []
            }, f)
    with pytest.raises(ValueError, match='distill.rank3.json belongs to another run'):
        _writer(root)
    os.remove(foreign)
    with pytest.raises(FileNotFoundError, match='rank 0'):
        _writer(str(tmp_path / 'empty'), world_size=2, shard=1)


def test_iterations_map_to_the_units_of_each_rank_and_world_size_changes_are_refused():
    assert [DistillBaseModel.locate(i, 3) for i in (1, 3, 4)] == [(0, 1), (0, 3), (1, 1)]
    assert [DistillBaseModel.locate(i, 3, 1, 2) for i in (1, 3, 4, 7)] == [(1, 1), (1, 3), (3, 1), (5, 1)]
    model = DistillBaseModel({'num_gpu': 0, 'is_train': True, 'dist': False, 'path': {'resume_state': 'x/9.state'}})
    assert (model.rank, model.world_size) == (0, 1)
    with pytest.raises(ValueError, match=r'x/9.state was saved by a run of 2 process\(es\), this run has 1'):
        model.resume_training({'iter': 9, 'unit_state': None, 'unit_states': [None, None], 'world_size': 2})
    model.world_size = 2
    assert model.units_per_rank(3) == 2
    assert model.iters_needed_text(
        3, 'images', 8,
        'distill.iters_per_instance') == ('ceil(3 images / 2 processes) = 2 x distill.iters_per_instance=8 = 16')


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_pytorch_launcher_initialises_gloo_without_cuda():
    """BasicSR's init_dist('pytorch') (default backend nccl) in a fresh interpreter without CUDA: gloo."""
    code = ('import basicsr_distill, torch.distributed as dist\n'
            'from basicsr.utils.dist_util import init_dist, get_dist_info\n'
            'init_dist("pytorch")\n'
            'print(dist.get_backend(), *get_dist_info())\n'
            'dist.destroy_process_group()\n')
    env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES='',
        RANK='0',
        LOCAL_RANK='0',
        WORLD_SIZE='1',
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(_free_port()),
        OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ['gloo', '0', '1']


def test_cpu_dist_fix_only_without_cuda(monkeypatch):
    from basicsr.utils import dist_util
    if torch.cuda.is_available():
        assert compat.fix_cpu_dist_init() is False and dist_util._init_dist_pytorch is not compat._init_dist_pytorch_cpu
        return
    assert dist_util._init_dist_pytorch is compat._init_dist_pytorch_cpu  # applied at import
    assert compat.fix_cpu_dist_init() is True  # idempotent
    monkeypatch.delenv('RANK', raising=False)
    with pytest.raises(RuntimeError, match='torchrun --nproc_per_node=N'):
        compat._init_dist_pytorch_cpu('nccl')

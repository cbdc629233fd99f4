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
import cv2
import json
import os
import os.path as osp
import pathlib
import pytest
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import REPO, data_path, write_option_file

from basicsr.archs.srvgg_arch import SRVGGNetCompact
from basicsr_distill.distilled_set import validate_distilled_set

TRAIN = osp.join(REPO, 'basicsr_distill', 'train.py')
RUN_TIMEOUT = 120  # seconds for one process, a safety net only
# manifest fields that legitimately differ between two runs (timestamps, wall time, this run's option paths)
VOLATILE = ('created', 'updated', 'wall_time_s', 'options')
G_OPT = {
    'type': 'SRVGGNetCompact',
    'num_in_ch': 3,
    'num_out_ch': 3,
    'num_feat': 8,
    'num_conv': 2,
    'upscale': 4,
    'act_type': 'prelu'
}


# ------------------------------------------------------------------------------------------------ option files
def _common(name, model_type, dataset, total_iter, freq):
    return {
        'name': name,
        'model_type': model_type,
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train':
            dict(
                dataset,
                name='train',
                io_backend={'type': 'disk'},
                use_shuffle=False,
                num_worker_per_gpu=0,
                batch_size_per_gpu=1,
                dataset_enlarge_ratio=1,
                prefetch_mode=None)
        },
        'path': {
            'distilled_root': 'distilled',
            'resume_state': None
        },  # relative: under the run's cwd
        'train': {
            'total_iter': total_iter,
            'warmup_iter': -1
        },
        'logger': {
            'print_freq': 1,
            'save_checkpoint_freq': freq,
            'use_tb_logger': False
        },
    }


def idc_options(data):
    """IDC: instances t20 (8 steps), tiny (smaller than a patch: an empty unit), tt27 (8 steps, 34 pairs)."""
    hr = osp.join(data, 'idc_hr')
    if not osp.isdir(hr):
        os.makedirs(hr)
        for name in ('tt27', 't20'):
            shutil.copy(data_path('data', 'train', 't91', f'{name}.png'), osp.join(hr, f'{name}.png'))
        cv2.imwrite(osp.join(hr, 'tiny.png'), cv2.imread(data_path('data', 'train', 't91', 't1.png'))[:28, :28])
    T = 8
    opt = _common('idc_kill', 'IDCModel', {
        'type': 'SRInstanceDataset',
        'dataroot_gt': hr,
        'gt_size': 32,
        'stride': 16
    }, 3 * T, 3)
    opt['network_t'] = {'type': 'IMDN', 'block_type': 'imdb_ntire22', 'upscale': 4}
    opt['path'].update(
        pretrain_network_t=osp.join(REPO, 'weights', 'imdn_baseline.pth'),
        strict_load_t=True,
        ignore_resume_networks=['network_t'])
    opt['distill'] = {
        'ratio': 0.1,
        'init': 'real',
        'iters_per_instance': T,
        'warmup_iters': 2,
        'assign_iters': 4,
        'assign_steps': 2,
        'num_groups': 3,
        'real_batch_size': 16,
        'rlff': {
            'kernel_size': 3,
            'num_channels': 16,
            'patch_size': 4
        },
        'ncfd': {
            'num_freqs': 64,
            'alpha': 0.5,
            'bank_size': 256
        },
        'weights': {
            'ins': 1.0,
            'group': 1.0,
            'pair': 0.1
        },
        'optim': {
            'type': 'Adam',
            'lr': 0.01
        }
    }
    return opt


def gsdd_options(data):
    """GSDD: classes bsd and tt (three real images each), IPC 3, 4 iterations per class."""
    root = osp.join(data, 'gsdd_classes')
    weights = osp.join(data, 'gsdd_g.pth')
    if not osp.isdir(root):
        for cls, sub, names in (('tt', 't91', ['tt1.png', 'tt2.png', 'tt3.png']),
                                ('bsd', 'bsd200', ['100075.png', '100080.png', '100098.png'])):
            os.makedirs(osp.join(root, cls))
            for name in names:
                shutil.copy(data_path('data', 'train', sub, name), osp.join(root, cls, name))
        net = SRVGGNetCompact(**{k: v for k, v in G_OPT.items() if k != 'type'})
        with torch.no_grad():  # a fixed, seeded generator without touching the global RNG
            gen = torch.Generator().manual_seed(0)
            for param in net.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
        torch.save({'params': net.state_dict()}, weights)
    opt = _common('gsdd_kill', 'GSDDModel', {'type': 'SRClassFolderDataset', 'dataroot_gt': root, 'gt_size': 32}, 8, 5)
    opt['network_g'] = dict(G_OPT)
    opt['path'].update(pretrain_network_g=weights, strict_load_g=True, ignore_resume_networks=['network_g'])
    opt['distill'] = {
        'ipc': 3,
        'iters_per_class': 4,
        'batch_real': 4,
        'lam': 0.1,
        'chunk_size': 2,
        'extractor': {
            'num_feat': 4,
            'norm': 'instance'
        },
        'inversion': {
            'iters': 3,
            'lr': 0.01,
            'w_feat': 0.0,
            'w_pix': 1.0
        }
    }
    return opt


def minimax_options(data):
    """Minimax-SR: stage 1 (iteration 1), 4 fine-tuning iterations (2-5), 2 pseudo-classes of 2 images (6-7)."""
    hr = osp.join(data, 'minimax_hr')
    if not osp.isdir(hr):
        os.makedirs(hr)
        for name in ('tt1.png', 'tt2.png', 'tt3.png'):
            shutil.copy(data_path('data', 'train', 't91', name), osp.join(hr, name))
    opt = _common('minimax_kill', 'MinimaxDiffusionModel', {
        'type': 'DistillStageDataset',
        'length': 10,
        'dataroot_gt': hr,
        'gt_size': 64,
        'stride': 64
    }, 7, 2)
    opt['distill'] = {
        'stage1': {
            'threshold': 'median',
            'extractor': {
                'type': 'color_gradient'
            },
            'k': 2,
            'seed': 0
        },
        'dit': {
            'config': 'tiny'
        },
        'vae': {
            'config': 'tiny'
        },
        'finetune': {
            'iters': 4,
            'batch_size': 2,
            'ema_decay': 0.9
        },
        'sample': {
            'images_per_class': 2,
            'steps': 2,
            'guidance_scale': 4.0,
            'seed': 0
        },
    }
    return opt


def idc_batched_options(data):
    """IDC with distill.instances_per_step 3: t20, tiny and tt27 in one batch (iterations 1..8; tiny written at 1)."""
    opt = idc_options(data)
    opt['name'] = 'idc_batched_kill'
    opt['distill']['instances_per_step'] = 3
    opt['train']['total_iter'] = 8
    return opt


OPTIONS = {'idc': idc_options, 'idc_batched': idc_batched_options, 'gsdd': gsdd_options, 'minimax': minimax_options}


# ------------------------------------------------------------------------------------------------ processes
def start_run(opt, cwd, *extra, nproc=None):
    """Start ``basicsr_distill/train.py -opt <cwd>/<name>.yml [extra]`` in ``cwd`` (one thread, CPU only).

    With ``nproc``: under ``torchrun --standalone --nproc_per_node=nproc ... --launcher pytorch``, in a process group
    of its own (so that a SIGKILL of the group reaches every rank).
    """
    os.makedirs(cwd, exist_ok=True)
    opt_path = osp.join(cwd, f'{opt["name"]}.yml')
    if not osp.isfile(opt_path):
        write_option_file(opt, pathlib.Path(opt_path))
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    log = open(osp.join(cwd, f'run_{len([f for f in os.listdir(cwd) if f.startswith("run_")])}.log'), 'w')
    cmd = [sys.executable, TRAIN, '-opt', opt_path, *extra]
    if nproc:
        cmd = [
            sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', *cmd[1:],
            '--launcher', 'pytorch'
        ]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=bool(nproc))
    proc.log_file = log
    return proc


def finish(proc):
    """Wait for ``proc``; fail with its log if it does not exit 0."""
    try:
        rc = proc.wait(RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    proc.log_file.close()
    if rc != 0:
        with open(proc.log_file.name) as f:
            pytest.fail(f'{proc.args} exited with {rc}:\n{f.read()[-4000:]}')


def stop(*procs):
    """Kill what is still running (a test that failed half way)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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


def logged(iteration):
    """BasicSR's loop has logged ``iteration`` (print_freq 1): the process is in the next one, or saving."""

    def condition(proc):
        with open(proc.log_file.name) as f:
            done = [int(v) for v in re.findall(r'\[epoch:\s*\d+, iter:\s*(\d+),', f.read())]
        return bool(done) and max(done) >= iteration

    return condition


def writing(cwd, prefix):
    """A file of a pair named ``prefix*`` exists in hr/ (final or temporary name): that unit is being written."""
    folder = osp.join(cwd, 'distilled', 'hr')
    return lambda proc: osp.isdir(folder) and any(prefix in f for f in os.listdir(folder))


def state_iters(cwd, name):
    folder = osp.join(cwd, 'experiments', name, 'training_states')
    if not osp.isdir(folder):
        return []
    return sorted(int(f[:-len('.state')]) for f in os.listdir(folder) if f.endswith('.state'))


# ------------------------------------------------------------------------------------------------ comparison
def listing(folder):
    """Relative paths of every file under ``folder``."""
    out = []
    for dirpath, _, files in os.walk(folder):
        out.extend(osp.relpath(osp.join(dirpath, f), folder) for f in files)
    return sorted(out)


def leftovers(cwd):
    """Temporary files anywhere under the run folder (distilled set, work dir, training states)."""
    return [f for f in listing(cwd) if osp.basename(f).startswith('.distill-tmp-') or f.endswith('.tmp')]


def assert_same_set(a, b):
    """The distilled sets under ``a/distilled`` and ``b/distilled`` are the same set, byte for byte."""
    ra, rb = osp.join(a, 'distilled'), osp.join(b, 'distilled')
    ma = validate_distilled_set(ra, scale=4, require_complete=True)
    mb = validate_distilled_set(rb, scale=4, require_complete=True)
    assert [p['name'] for p in ma['pairs']] == [p['name'] for p in mb['pairs']]
    assert ma['units_finished'] == mb['units_finished']
    assert {k: v for k, v in ma.items() if k not in VOLATILE} == {k: v for k, v in mb.items() if k not in VOLATILE}
    names = {p['name'] for p in ma['pairs']}
    expected = ['distill.json', 'meta_info.txt'] + [
        f'{sub}/{n}.{ext}' for n in names for sub, ext in (('hr', 'png'), ('lr', 'png'), ('lr_float', 'npy'))
    ]
    assert listing(ra) == sorted(expected)  # nothing missing, nothing extra
    assert listing(rb) == sorted(expected)
    for rel in expected[1:]:
        with open(osp.join(ra, rel), 'rb') as fa, open(osp.join(rb, rel), 'rb') as fb:
            assert fa.read() == fb.read(), rel
    assert not leftovers(a) and not leftovers(b), (leftovers(a), leftovers(b))


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

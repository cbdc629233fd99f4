"""Same options and seed give a byte-identical distilled set (CPU), and the models never reseed a global RNG.

Every random draw of the models comes from CPU ``torch.Generator`` objects and scikit-learn ``random_state`` values
derived from ``manual_seed`` (README, "Reproducibility"). So two runs of ``basicsr_distill/train.py`` with the same
options write the same bytes, and so does a run built in this process with the global torch / numpy / Python RNGs
in any other state (BasicSR seeds them in its train_pipeline; the models must not depend on that).

Slow-safe: about 30 s on 2 CPU cores (option files and helpers shared with test_kill_resume.py).
"""
import ast
import numpy as np
import os
import os.path as osp
import pytest
import random
import torch

import basicsr_distill  # noqa: F401

# isort: split
from conftest import OPTIONS, REPO, assert_same_set, build_distill_model, finish, start_run, stop

from basicsr_distill.distilled_set import read_manifest
from basicsr_distill.models.gsdd_model import GSDDModel
from basicsr_distill.models.idc_model import IDCModel
from basicsr_distill.models.minimax_diffusion_model import MinimaxDiffusionModel

MODELS = {'idc': IDCModel, 'gsdd': GSDDModel, 'minimax': MinimaxDiffusionModel}
PACKAGE = osp.join(REPO, 'basicsr_distill')
# calls that (re)seed or set a process-wide RNG
GLOBAL_SEEDING = {
    'torch.manual_seed', 'torch.seed', 'torch.random.manual_seed', 'torch.random.seed', 'torch.set_rng_state',
    'torch.random.set_rng_state', 'torch.cuda.manual_seed', 'torch.cuda.manual_seed_all', 'torch.cuda.seed',
    'torch.cuda.seed_all', 'torch.cuda.set_rng_state', 'torch.cuda.set_rng_state_all', 'np.random.seed',
    'numpy.random.seed', 'np.random.set_state', 'numpy.random.set_state', 'random.seed', 'random.setstate',
    'set_random_seed'
}
# the one allowed global seeding: basicsr_distill/train.py seeds the run with a manual_seed forced through --force_yml,
# as BasicSR's own parse_options seeds it (utils/options.apply_forced_seed); no model or library function does
ENTRY_POINT_SEEDING = {('basicsr_distill/utils/options.py', 'set_random_seed')}


def _dotted(node):
    """'a.b.c' for a Name / Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return '.'.join([node.id] + parts[::-1])
    return None


def _global_seeding_calls(path):
    """(line, call) of every global (re)seeding call in a file that is not inside ``with torch.random.fork_rng``."""
    tree = ast.parse(open(path).read(), path)
    found = []

    def visit(node, forked):
        if isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Call) and _dotted(item.context_expr.func) in ('torch.random.fork_rng',
                                                                                                'torch.fork_rng')
                for item in node.items):
            forked = True
        if isinstance(node, ast.Call) and _dotted(node.func) in GLOBAL_SEEDING and not forked:
            found.append((node.lineno, _dotted(node.func)))
        if isinstance(node, ast.ImportFrom) and node.module in ('torch', 'torch.random', 'random', 'numpy.random'):
            found.extend((node.lineno, f'from {node.module} import {a.name}') for a in node.names
                         if a.name in ('manual_seed', 'seed', 'set_rng_state', 'setstate'))
        for child in ast.iter_child_nodes(node):
            visit(child, forked)

    visit(tree, False)
    return found


def test_the_package_never_reseeds_a_global_rng_and_kmeans_is_seeded():
    bad, kmeans, allowed = [], [], []
    for dirpath, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                path = osp.join(dirpath, name)
                rel = osp.relpath(path, REPO)
                calls = _global_seeding_calls(path)
                allowed.extend((rel, call) for _, call in calls if (rel, call) in ENTRY_POINT_SEEDING)
                bad.extend(f'{rel}:{line}: {call}' for line, call in calls if (rel, call) not in ENTRY_POINT_SEEDING)
                for node in ast.walk(ast.parse(open(path).read(), path)):
                    if isinstance(node, ast.Call) and (_dotted(node.func) or '').split('.')[-1] == 'KMeans':
                        kmeans.append((f'{osp.relpath(path, REPO)}:{node.lineno}',
                                       any(k.arg == 'random_state' for k in node.keywords)))
    assert not bad, bad
    assert sorted(allowed) == sorted(ENTRY_POINT_SEEDING)  # the allowed call is there once: the list is not stale
    assert kmeans and all(seeded for _, seeded in kmeans), kmeans  # sklearn KMeans always gets a random_state


def test_minimax_tiny_models_leave_the_global_rng_as_it_was(tmp_path, one_thread):
    opt = OPTIONS['minimax'](str(tmp_path / 'data'))
    opt['path']['distilled_root'] = str(tmp_path / 'distilled')
    torch.rand(3)  # some state, not a seed
    before = torch.get_rng_state()
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    build_distill_model(MinimaxDiffusionModel, opt)  # tiny DiT and VAE seeded inside torch.random.fork_rng
    assert torch.equal(torch.get_rng_state(), before)
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before


def _perturb_global_rngs(n):
    """Move the global RNGs by ``n`` draws (no seeding): the models must not read them."""
    torch.rand(n)
    np.random.rand(n)
    for _ in range(n):
        random.random()


def _run_in_process(method, opt, root):
    """Every iteration of BasicSR's loop, in this process, the global RNGs moved before and between them."""
    opt = dict(opt, path=dict(opt['path'], distilled_root=root))
    with torch.random.fork_rng(devices=[]):
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            _perturb_global_rngs(11)
            model = build_distill_model(MODELS[method], opt)
            for it in range(1, int(opt['train']['total_iter']) + 1):
                _perturb_global_rngs(it % 5 + 1)
                model.optimize_parameters(it)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


@pytest.mark.parametrize('method', ['idc', 'gsdd', 'minimax'])
def test_same_options_and_seed_give_a_byte_identical_set(tmp_path, method, one_thread):
    opt = OPTIONS[method](str(tmp_path / 'data'))
    first, second = str(tmp_path / 'first'), str(tmp_path / 'second')
    procs = [start_run(opt, first), start_run(opt, second)]  # two uninterrupted runs of the CLI, side by side
    try:
        _run_in_process(method, opt, str(tmp_path / 'in_process'))  # meanwhile: global RNGs in another state
        for proc in procs:
            finish(proc)
    finally:
        stop(*procs)
    assert_same_set(first, second)
    cli, here = osp.join(first, 'distilled'), str(tmp_path / 'in_process')
    names = [p['name'] for p in read_manifest(cli)['pairs']]
    assert names and names == [p['name'] for p in read_manifest(here)['pairs']]
    for rel in ['meta_info.txt'] + [
            f'{sub}/{n}.{ext}' for n in names for sub, ext in (('hr', 'png'), ('lr', 'png'), ('lr_float', 'npy'))
    ]:
        with open(osp.join(cli, rel), 'rb') as fa, open(osp.join(here, rel), 'rb') as fb:
            assert fa.read() == fb.read(), rel

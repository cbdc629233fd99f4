"""The benchmark grid: a YAML preset -> cells (training sets, downstream runs), their option files, results on disk.

A preset (``options/benchmark/*.yml``, plain YAML read with ``yaml.safe_load``: no tags) names methods (each with its
sizes), downstream archs, seeds and test sets; see docs/Benchmark.md, section "Preset keys", for the keys. Two kinds of
cells:

* a **set cell** ``set/<method>/<size>`` writes a training set in the distilled-set format under
  ``<work_dir>/sets/<method>_<size>``: ``type: distill`` runs ``basicsr_distill/train.py`` on a derived option file,
  ``type: select`` runs ``scripts/select_subset.py`` on the preset's patch pool;
* a **train cell** ``train/<arch>/<method>/<size>/seed<k>`` trains ``arch`` on that set with BasicSR's ``SRModel``
  loop (``basicsr_distill/train.py`` on a derived option file) and evaluates it on the test sets.

Each finished cell leaves ``<work_dir>/cells/<cell id>.json`` (written atomically) holding its spec hash and results;
a rerun skips it. A cell whose spec changed is refused (name the file to delete), so a table never mixes settings.
The evaluation (test / validation sets, metrics) is not part of a train cell's spec: adding a set or a metric to a
preset keeps its finished cells, and the runner evaluates their saved weights on what is missing.

With ``set_seeds`` (several draws of each training set), the draw of seed ``s`` other than ``set_seed`` is the cell
``set/<method>/<size>/set<s>`` (folder ``<method>_<size>_set<s>``) and its downstream runs
``train/<arch>/<method>/<size>/set<s>/seed<k>``; the draw of ``set_seed`` keeps the ids (and spec hashes) of a preset
without ``set_seeds``. The reference method (the full pool) has one draw.
Distillation and training run with ``--auto_resume``, so a cell interrupted half-way also continues where it stopped.
"""
import copy
import hashlib
import json
import math
import os.path as osp
import statistics
import yaml

from basicsr_distill.utils.file_io import write_text_atomic  # also imported from here (benchmark.report)

#: keys of a preset, with their defaults (None: required)
GRID_DEFAULTS = {
    'name': None,
    'work_dir': None,
    'scale': 4,
    'train_hr': None,  # a folder, or a list of folders linked into one flat folder (names must be unique)
    'pool': None,  # {gt_size, stride}: the patch pool of the select methods and of r
    'selection_opt': None,  # an option file whose network_t / distill.feature_layer the select methods may use
    'set_seed': 0,  # seed of every distillation / selection
    'set_seeds': None,  # seeds of the set draws (default [set_seed]); mean +- std over set draws x seeds
    'seeds': [0],  # seeds of the downstream training runs (mean +- std over them)
    'val_sets': {},  # {name: {hr, lr}}: validation sets (settings are chosen on them), evaluated like test_sets
    'test_sets': None,  # {name: {hr: dir, lr: dir | null}}: the sets a chosen setting is reported on
    'val_freq': 0,  # > 0: the student is validated on val_sets every val_freq iterations (the time-to-quality curve)
    'rgb_psnr': True,  # a PSNR on RGB column beside each PSNR on Y
    'metrics': ['psnr', 'ssim'],
    'device': 'auto',  # evaluation device: auto (cuda when present), cpu, cuda
    'bicubic_reference': True,  # a 'bicubic' row (BasicSR's MATLAB imresize) in the table
    'methods': None,  # {name: {type: distill | select, ...}}
    'archs': None,  # {name: {opt: train option file, options: {...}}}
}
METHOD_KEYS = {'type', 'opt', 'args', 'sizes', 'size_name', 'like', 'options', 'reference'}
ARCH_KEYS = {'opt', 'options'}
PLACEHOLDERS = ('train_hr', 'size', 'gt_size', 'stride', 'scale')
#: keys of a train cell's spec that only say how it is evaluated (not part of what makes the cell reusable)
EVAL_KEYS = ('test_sets', 'val_sets', 'metrics', 'rgb_psnr', 'val_freq')
#: the time-to-quality target: the reference's final validation PSNR (Y) minus this many dB
TARGET_DB = 0.1


class GridError(ValueError):
    """A preset that cannot run; the message names the file and the key."""


def _require(cond, path, message):
    if not cond:
        raise GridError(f'{path}: {message}')


def load_grid(path, repo, check_paths=True):
    """Read and check a preset; relative paths are resolved against ``repo``.

    Args:
        path (str): The preset YAML file.
        repo (str): Repository root (relative paths in the preset are relative to it).
        check_paths (bool): Check that the training folders and option files exist. Default: True.

    Returns:
        dict: The preset with defaults filled in, paths absolute, ``methods`` / ``archs`` as ordered dicts with each
        method's ``sizes`` (list of numbers) and ``size_name`` (label prefix, default ``'r'``) resolved.

    Raises:
        FileNotFoundError: If the preset, a folder or an option file it names does not exist.
        GridError: On an unknown or missing key, a bad method type, an empty size list, a ``like`` that refers to a
            method not defined before it, or a duplicate name.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'benchmark preset {path} does not exist')
    with open(path, encoding='utf-8') as f:
        given = yaml.safe_load(f) or {}
    _require(isinstance(given, dict), path, 'a preset is a mapping of keys')
    unknown = sorted(set(given) - set(GRID_DEFAULTS))
    _require(not unknown, path, f'unknown keys {unknown}; known: {sorted(GRID_DEFAULTS)}')
    grid = copy.deepcopy(GRID_DEFAULTS)
    grid.update(given)
    for key, value in grid.items():
        _require(value is not None or key in ('selection_opt', 'set_seeds'), path, f'key "{key}" is required')

    def absolute(value):
        return value if osp.isabs(value) else osp.normpath(osp.join(repo, value))

    grid['preset'] = osp.abspath(path)
    grid['work_dir'] = absolute(grid['work_dir'])
    hr_dirs = grid['train_hr'] if isinstance(grid['train_hr'], list) else [grid['train_hr']]
    grid['train_hr'] = [absolute(d) for d in hr_dirs]
    for folder in grid['train_hr']:
        if check_paths and not osp.isdir(folder):
            raise FileNotFoundError(f'{path}: train_hr folder {folder} does not exist')
    _require(
        isinstance(grid['pool'], dict) and {'gt_size', 'stride'} <= set(grid['pool']), path,
        'pool must give gt_size and stride (HR pixels)')
    _require(isinstance(grid['seeds'], list) and grid['seeds'], path, 'seeds must be a non-empty list')
    if grid['set_seeds'] is None:
        grid['set_seeds'] = [grid['set_seed']]
    _require(
        isinstance(grid['set_seeds'], list) and grid['set_seeds'] and grid['set_seed'] in grid['set_seeds'], path,
        f'set_seeds must be a non-empty list that holds set_seed ({grid["set_seed"]})')
    _require(isinstance(grid['test_sets'], dict) and grid['test_sets'], path, 'test_sets must be a non-empty mapping')
    _require(isinstance(grid['val_sets'], dict), path, 'val_sets must be a mapping {name: {hr, lr}}')
    both = sorted(set(grid['val_sets']) & set(grid['test_sets']))
    _require(not both, path, f'{both} are in both val_sets and test_sets: a set is for choosing or for reporting')
    for key in ('val_sets', 'test_sets'):
        for name, spec in grid[key].items():
            _require(isinstance(spec, dict) and 'hr' in spec, path, f'{key}.{name} needs hr (and optionally lr)')
            spec['hr'] = absolute(spec['hr'])
            spec['lr'] = absolute(spec['lr']) if spec.get('lr') else None
    _require(isinstance(grid['val_freq'], int) and grid['val_freq'] >= 0, path, 'val_freq must be an integer >= 0')
    _require(not grid['val_freq'] or grid['val_sets'], path, 'val_freq needs val_sets (the sets of the curve)')
    for name, spec in grid['val_sets'].items():
        _require(not grid['val_freq'] or spec['lr'], path,
                 f'val_sets.{name}.lr is required with val_freq (BasicSR\'s validation reads LR files)')
    if grid['selection_opt']:
        grid['selection_opt'] = absolute(grid['selection_opt'])

    _require(isinstance(grid['methods'], dict) and grid['methods'], path, 'methods must be a non-empty mapping')
    for name, method in grid['methods'].items():
        where = f'methods.{name}'
        _require(isinstance(method, dict), path, f'{where} must be a mapping')
        unknown = sorted(set(method) - METHOD_KEYS)
        _require(not unknown, path, f'{where}: unknown keys {unknown}; known: {sorted(METHOD_KEYS)}')
        _require(method.get('type') in ('distill', 'select'), path, f'{where}.type must be distill or select')
        if method['type'] == 'distill':
            _require(method.get('opt'), path, f'{where}.opt (a distillation option file) is required')
            method['opt'] = absolute(method['opt'])
            if check_paths and not osp.isfile(method['opt']):
                raise FileNotFoundError(f'{path}: {where}.opt {method["opt"]} does not exist')
        else:
            _require(isinstance(method.get('args', []), list), path, f'{where}.args must be a list')
            _require(not method.get('opt'), path, f'{where}: a select method uses the preset\'s pool, not opt')
        if method.get('like'):
            like = method['like']
            before = list(grid['methods'])[:list(grid['methods']).index(name)]
            _require(like in before, path, f'{where}.like={like!r} must name a method defined before it')
            _require(not method.get('sizes'), path, f'{where}: give sizes or like, not both')
            method['sizes'] = list(grid['methods'][like]['sizes'])
            method['size_name'] = grid['methods'][like]['size_name']
        _require(
            isinstance(method.get('sizes'), list) and method['sizes'], path,
            f'{where}.sizes must be a non-empty list (r or IPC values) unless like is given')
        method.setdefault('size_name', 'r')
        method.setdefault('options', {})
        method.setdefault('args', [])
    _require(isinstance(grid['archs'], dict) and grid['archs'], path, 'archs must be a non-empty mapping')
    for name, arch in grid['archs'].items():
        unknown = sorted(set(arch) - ARCH_KEYS)
        _require(not unknown, path, f'archs.{name}: unknown keys {unknown}; known: {sorted(ARCH_KEYS)}')
        _require(arch.get('opt'), path, f'archs.{name}.opt (a BasicSR train option file) is required')
        arch['opt'] = absolute(arch['opt'])
        if check_paths and not osp.isfile(arch['opt']):
            raise FileNotFoundError(f'{path}: archs.{name}.opt {arch["opt"]} does not exist')
        arch.setdefault('options', {})
    return grid


def selection_rule(method):
    """The ``select_subset.py --method`` of a select method (``'random'`` where its args give none); None for a
    distill method."""
    if method['type'] != 'select':
        return None
    args = [str(a) for a in method.get('args') or []]
    return args[args.index('--method') + 1] if '--method' in args[:-1] else 'random'


def random_baselines(grid):
    """Names of the select methods that draw real pairs at random (rule ``random``), the reference excluded: the
    baselines of the table's "full minus random" lines."""
    return tuple(name for name, method in grid['methods'].items()
                 if selection_rule(method) == 'random' and not method.get('reference'))


def eval_sets(grid):
    """``{name: spec}`` of every evaluated set: the validation sets first, then the test sets."""
    return {**grid['val_sets'], **grid['test_sets']}


def metric_columns(grid):
    """The metric names of the result columns: the preset's ``metrics`` with ``psnr_rgb`` after ``psnr`` when
    ``rgb_psnr`` is on (``psnr`` / ``ssim`` are on Y)."""
    columns = []
    for metric in grid['metrics']:
        columns.append(metric)
        if metric == 'psnr' and grid['rgb_psnr']:
            columns.append('psnr_rgb')
    return columns


def cell_key(spec):
    """A cell spec without its evaluation keys (:data:`EVAL_KEYS`): what its spec hash is made of."""
    return {k: v for k, v in spec.items() if k not in EVAL_KEYS}


def size_label(method, size):
    """``'r0.05'``, ``'ipc8'``: the method's size name and the value."""
    return f'{method["size_name"]}{size:g}'


def spec_hash(spec):
    """Short SHA-256 of a JSON-able spec (sorted keys): what makes a finished cell reusable."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def set_draws(grid, method):
    """The set seeds of a method: ``[set_seed]`` for the reference (the full pool has one draw), else ``set_seeds``.
    """
    return [grid['set_seed']] if method.get('reference') else list(grid['set_seeds'])


def set_cells(grid):
    """The set cells in preset order (draws of one size together): ``[{'id', 'method', 'size', 'label',
    'set_seed', 'draw', 'root', 'spec'}]``; ``draw`` is ``''`` for ``set_seed`` and ``'set<s>'`` for another seed."""
    cells = []
    for name, method in grid['methods'].items():
        for index, size in enumerate(method['sizes']):
            label = size_label(method, size)
            for seed in set_draws(grid, method):
                draw = '' if seed == grid['set_seed'] else f'set{seed}'
                spec = {
                    'method': name,
                    'size': size,
                    'definition': method,
                    'pool': grid['pool'],
                    'scale': grid['scale'],
                    'train_hr': grid['train_hr'],
                    'set_seed': seed
                }
                if method['type'] == 'select':
                    spec['selection_opt'] = grid['selection_opt']
                cells.append({
                    'id':
                    f'set/{name}/{label}' + (f'/{draw}' if draw else ''),
                    'kind':
                    'set',
                    'method':
                    name,
                    'size':
                    size,
                    'label':
                    label,
                    'set_seed':
                    seed,
                    'draw':
                    draw,
                    'size_index':
                    index,
                    'root':
                    osp.join(grid['work_dir'], 'sets', f'{name}_{label}' + (f'_{draw}' if draw else '')),
                    'spec':
                    spec
                })
    return cells


def like_cell(grid, sets, cell):
    """The set cell a ``like`` method's cell is selected from, or None where its method has no ``like``.

    Args:
        grid (dict): The checked preset (``methods``).
        sets (list[dict]): Every set cell (:func:`set_cells`).
        cell (dict): A set cell.

    Returns:
        dict | None: The ``like`` method's cell of the same size and set draw, or its one draw where it has one
        (the reference).
    """
    like = grid['methods'][cell['method']].get('like')
    if not like:
        return None
    likes = [c for c in sets if c['method'] == like and c['size_index'] == cell['size_index']]
    return next((c for c in likes if c['set_seed'] == cell['set_seed']), likes[0])


def with_like_sets(grid, sets, chosen):
    """The ids of the chosen set cells and of every set they are built ``like`` (recursively).

    A ``like`` set (``random_teacher_hr`` of ``random``'s draw) needs that draw on disk, so a piece that names only
    the control (``--methods random_teacher_hr_1pct --set_seeds 1``) also builds ``random_1pct``'s draw 1.

    Args:
        grid (dict): The checked preset.
        sets (list[dict]): Every set cell (:func:`set_cells`).
        chosen (list[dict]): The selected set cells.

    Returns:
        set[str]: Cell ids.
    """
    ids, stack = set(), list(chosen)
    while stack:
        cell = stack.pop()
        if cell['id'] not in ids:
            ids.add(cell['id'])
            like = like_cell(grid, sets, cell)
            if like is not None:
                stack.append(like)
    return ids


def train_cells(grid, sets):
    """The train cells: every arch x set x seed, in that nesting order."""
    cells = []
    for arch_name, arch in grid['archs'].items():
        for set_cell in sets:
            for seed in grid['seeds']:
                spec = {
                    'arch': arch_name,
                    'definition': arch,
                    'set': set_cell['id'],
                    'set_hash': spec_hash(set_cell['spec']),
                    'seed': seed
                }
                draw = set_cell['draw']
                cells.append({
                    'id':
                    f'train/{arch_name}/{set_cell["method"]}/{set_cell["label"]}/' + (f'{draw}/' if draw else '') +
                    f'seed{seed}',
                    'kind':
                    'train',
                    'arch':
                    arch_name,
                    'set':
                    set_cell,
                    'seed':
                    seed,
                    'spec':
                    spec,
                    'name':
                    f'{grid["name"]}_{arch_name}_{set_cell["method"]}_{set_cell["label"]}' +
                    (f'_{draw}' if draw else '') + f'_s{seed}'
                })
    return cells


# ------------------------------------------------------------------------------------------------ option files
def fill_placeholders(value, values):
    """Replace ``{train_hr}``-style placeholders in every string of a nested structure.

    A string that is exactly one placeholder takes the value with its type (``'{size}'`` -> 0.1); other strings are
    formatted. Unknown placeholders raise ``KeyError`` naming them.
    """
    if isinstance(value, dict):
        return {k: fill_placeholders(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_placeholders(v, values) for v in value]
    if isinstance(value, str) and '{' in value:
        stripped = value.strip()
        if stripped.startswith('{') and stripped.endswith('}') and stripped[1:-1] in values:
            return values[stripped[1:-1]]
        return value.format(**values)
    return value


def deep_merge(base, extra):
    """``base`` updated recursively by ``extra`` (a None value deletes the key); returns a new dict."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def absolutize(opt, repo, keys=('dataroot', 'meta_info_file', 'pretrain_network_', 'distilled_root', 'path')):
    """Make relative paths under keys starting with one of ``keys`` absolute (against ``repo``) when they exist there.

    The derived option files run with the work dir as current directory, so ``weights/imdn_baseline.pth`` must
    become absolute; values that do not exist under ``repo`` (names, types) are left as they are.
    """
    if isinstance(opt, dict):
        out = {}
        for key, value in opt.items():
            if (isinstance(value, str) and value and not osp.isabs(value) and str(key).startswith(keys)
                    and osp.exists(osp.join(repo, value))):
                out[key] = osp.normpath(osp.join(repo, value))
            else:
                out[key] = absolutize(value, repo, keys)
        return out
    if isinstance(opt, list):
        return [absolutize(v, repo, keys) for v in opt]
    return opt


def read_option_file(path):
    """A BasicSR option file as a plain dict (the package's reader, ``utils.options.read_option_file``: BasicSR's
    loader, tags run, e.g. the plugin import), made of plain dicts and lists."""
    from basicsr_distill.utils.options import read_option_file as read_options
    return json.loads(json.dumps(read_options(path)))


def write_option_file(opt, path):
    """Write a derived option file (atomically); the plugin line is written as the tag that imports the plugin."""
    opt = dict(opt)
    opt.pop('plugin', None)
    text = ('# Derived by scripts/benchmark.py: do not edit (edit the preset). Option files are code: trusted only.\n'
            'plugin: !!python/name:basicsr_distill.__name__\n' + yaml.safe_dump(opt, sort_keys=False))
    return write_text_atomic(path, text)


# ------------------------------------------------------------------------------------------------ results
class CellStore():
    """Finished cells as ``<work_dir>/cells/<id>.json``, written atomically (temp name + rename)."""

    def __init__(self, work_dir):
        self.folder = osp.join(work_dir, 'cells')

    def path(self, cell):
        """``<work_dir>/cells/<id with / as __>.json``."""
        return osp.join(self.folder, cell['id'].replace('/', '__') + '.json')

    def load(self, cell):
        """The stored result of ``cell``, or None if it has not finished.

        Raises:
            GridError: If the stored cell was made with a different spec (naming the file to delete).
        """
        path = self.path(cell)
        if not osp.isfile(path):
            return None
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
        if spec_hash(cell_key(record.get('spec') or {})) != spec_hash(cell_key(cell['spec'])):
            raise GridError(f'{path} holds cell {cell["id"]} made with other settings than the preset gives now. '
                            'Use another work_dir, or delete that file (and the set / experiment it describes) to '
                            'recompute it.')
        return record

    def save(self, cell, result):
        """Record a finished cell (id, spec, spec hash and the JSON-able ``result``) atomically; returns it."""
        record = {'id': cell['id'], 'spec_hash': spec_hash(cell_key(cell['spec'])), 'spec': cell['spec'], **result}
        write_text_atomic(self.path(cell), json.dumps(record, indent=1, default=str) + '\n')
        return record


def mean_std(values):
    """(mean, sample std) of the finite values; std is 0 for one value; (nan, nan) for none."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float('nan'), float('nan')
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows, test_sets, metrics):
    """Group per-seed rows by (arch, method, size) and give mean / std of every metric and of the training time.

    Args:
        rows (list[dict]): One per train cell: ``arch, method, label, size, pairs, ratio, set_bytes, set_time_s,
            set_seed, seed, train_time_s`` and ``<test set>/<metric>`` values.
        test_sets (list[str]): Test set names (column order).
        metrics (list[str]): Metric names (column order).

    Returns:
        list[dict]: One per group (the set draws and student seeds of one arch, method and size), in the order of
        ``rows``: the group keys, ``runs`` (the number of rows: set draws x student seeds), ``draws`` (distinct
        ``set_seed`` values) and ``student_seeds`` (distinct ``seed`` values) and ``<col>_mean`` / ``<col>_std`` for
        every metric column and ``train_time_s``.
    """
    groups = {}
    for row in rows:
        groups.setdefault((row['arch'], row['method'], row['label']), []).append(row)
    summary = []
    for members in groups.values():
        first = members[0]
        keys = ('arch', 'method', 'label', 'size', 'pairs', 'ratio', 'set_bytes', 'set_time_s', 'reference')
        out = {k: first.get(k) for k in keys}
        out['runs'] = len(members)  # set draws x student seeds
        out['draws'] = len({m.get('set_seed') for m in members})
        out['student_seeds'] = len({m.get('seed') for m in members})
        for col in [f'{t}/{m}' for t in test_sets for m in metrics] + ['train_time_s']:
            out[f'{col}_mean'], out[f'{col}_std'] = mean_std([m.get(col) for m in members])
        summary.append(out)
    return summary


def time_to_quality(curves, val_set, target_db=TARGET_DB):
    """Iterations each (arch, method, size) needs to reach the reference's final validation PSNR minus ``target_db``.

    Per arch, the target is the final point (last iteration) of the reference method's mean curve (``reference``
    rows, e.g. the full pool) minus ``target_db``; every group's curve is the mean over its runs (set draws x
    seeds) at each iteration that all its runs reached.

    Args:
        curves (list[dict]): One per (run, iteration): ``arch, method, label, set_seed, seed, reference, dataset,
            iter, psnr`` (PSNR on Y in dB; other keys are ignored).
        val_set (str): The validation set of the curves (``dataset``).
        target_db (float): How far below the reference's final PSNR the target is. Default: 0.1.

    Returns:
        list[dict]: One per group with a curve, in the order of ``curves``: ``arch, method, label, runs, final``
        (mean PSNR at the last iteration), ``last_iter``, ``target`` (None without a reference of that arch) and
        ``iters`` (the first iteration whose mean PSNR is >= target; None if never reached or no target).
    """
    groups = {}
    for row in curves:
        if row.get('dataset') == val_set and row.get('psnr') is not None:
            key = (row['arch'], row['method'], row['label'])
            groups.setdefault(key, {'reference': bool(row.get('reference')), 'runs': {}})
            run = (row.get('set_seed'), row.get('seed'))
            groups[key]['runs'].setdefault(run, {})[int(row['iter'])] = float(row['psnr'])
    means = {}
    for key, group in groups.items():
        runs = list(group['runs'].values())
        iters = sorted(set.intersection(*(set(r) for r in runs)))
        means[key] = [(it, statistics.fmean(r[it] for r in runs)) for it in iters]
    targets = {}
    for key, group in groups.items():
        if group['reference'] and means[key] and key[0] not in targets:
            targets[key[0]] = means[key][-1][1] - target_db
    out = []
    for key, group in groups.items():
        curve, target = means[key], targets.get(key[0])
        reached = [it for it, value in curve if target is not None and value >= target]
        out.append({
            'arch': key[0],
            'method': key[1],
            'label': key[2],
            'reference': group['reference'],
            'runs': len(group['runs']),
            'final': curve[-1][1] if curve else None,
            'last_iter': curve[-1][0] if curve else None,
            'target': target,
            'iters': reached[0] if reached else None
        })
    return out

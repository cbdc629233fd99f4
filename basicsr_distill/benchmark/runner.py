"""Benchmark runner: methods x sizes x downstream archs x seeds x test sets, through the BasicSR loops, resumable.

For a preset (``options/benchmark/*.yml``; keys in docs/Benchmark.md, section "Preset keys"):

1. every method writes one training set per size in the distilled-set format (distillation methods through
   ``basicsr_distill/train.py --auto_resume``, selection baselines through ``scripts/select_subset.py``);
2. every arch is trained on every set (every set draw of ``set_seeds``) with every seed (BasicSR's ``SRModel``
   loop, ``--auto_resume``) and evaluated on the validation sets (``val_sets``: where settings are chosen) and the
   test sets (PSNR / SSIM on Y with a ``scale``-pixel border, as BasicSR, and PSNR on RGB; NIQE / LPIPS if listed);
   with ``val_freq`` BasicSR's validation loop also records the student's validation PSNR every ``val_freq``
   iterations (``CurveSRModel``: the time-to-quality curve);
3. results go to ``<work_dir>/results.csv`` (one row per run), ``curves.csv`` (one row per run and validation),
   ``table.md`` (mean ± std over set draws x seeds, and the time-to-quality table), ``psnr_vs_ratio.png``,
   ``psnr_vs_train_time.png`` and ``samples/<method>.png`` (distilled samples).

Finished cells are skipped (``<work_dir>/cells/*.json``), and an interrupted cell continues from its last
checkpoint, so rerunning the same command after a crash or Ctrl-C only does what is left. Logs of every subprocess
are in ``<work_dir>/logs/``. Usage::

    python scripts/benchmark.py -opt options/benchmark/cpu_291.yml            # run / resume the grid
    python scripts/benchmark.py -opt options/benchmark/cpu_291.yml --dry_run  # list the cells and their state
    python scripts/benchmark.py -opt options/benchmark/cpu_291.yml --report   # rebuild outputs from finished cells
    python scripts/benchmark.py -opt ... --methods full,idc --seeds 0 --archs EDSR_f32b4  # one piece of the grid

Option files are code (BasicSR's YAML loader runs tags): the preset itself is read with ``yaml.safe_load``, but the
option files it names are run by BasicSR. Use trusted files only.
"""
import argparse
import concurrent.futures
import glob
import os
import os.path as osp
import subprocess
import sys
import threading
import time

from basicsr_distill.benchmark import grid as grid_lib
from basicsr_distill.benchmark import report
from basicsr_distill.distilled_set import read_manifest

#: The repository root (this package's parent folder): the runner starts ``basicsr_distill/train.py`` and
#: ``scripts/select_subset.py`` of this checkout and resolves the preset's relative paths against it.
REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))

GUESS_S = {'set': 120.0, 'train': 60.0}  # ETA before any cell of a kind has finished here
PROGRESS_KEYS = ('ETA', 'eta:', ', iter:', '] unit ')


def fmt_time(seconds):
    seconds = int(round(seconds))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Progress():
    """'[k/N pct] what ... done in s | elapsed | ETA' lines; the ETA uses the mean time of each kind of cell."""

    def __init__(self, cells, done):
        self.total = len(cells)
        self.left = {c['id']: c['kind'] for c in cells if c['id'] not in done}
        self.count = self.total - len(self.left)
        self.times = {'set': [], 'train': []}
        self.start = time.time()

    def eta(self):
        mean = {k: (sum(v) / len(v) if v else GUESS_S[k]) for k, v in self.times.items()}
        return sum(mean[kind] for kind in self.left.values())

    def begin(self, what):
        print(f'[{self.count + 1}/{self.total}] {what} ...', flush=True)

    def end(self, cell, seconds):
        self.left.pop(cell['id'], None)
        self.count += 1
        self.times[cell['kind']].append(seconds)
        print(
            f'[{self.count}/{self.total} {100 * self.count / self.total:.0f}%] {cell["id"]} done in '
            f'{seconds:.0f} s | elapsed {fmt_time(time.time() - self.start)} | ETA {fmt_time(self.eta())}',
            flush=True)


def run_logged(cmd, cwd, log_path, threads=None):
    """Run a command, its output to ``log_path``; echo its own progress lines (unit / iter / ETA) now and then.

    Raises:
        RuntimeError: If it exits with a non-zero status (naming the log and its last lines).
    """
    os.makedirs(osp.dirname(log_path), exist_ok=True)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    if threads:  # several cells at once (--jobs): share the cores instead of oversubscribing them
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start, last_echo = time.time(), 0.0
    tty = sys.stdout.isatty()
    with open(
            log_path, 'a', encoding='utf-8', buffering=1) as log, subprocess.Popen(
                cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        log.write(f'$ {" ".join(cmd)}\n')
        for line in proc.stdout:
            log.write(line)
            if any(key in line for key in PROGRESS_KEYS) and (tty or time.time() - last_echo > 30):
                text = line.strip().split(' INFO: ')[-1][:150]
                print(f'\r    {text}' + ('' if tty else '\n'), end='', flush=True)
                last_echo = time.time()
    if tty and last_echo:
        print()
    if proc.returncode:
        with open(log_path, encoding='utf-8', errors='replace') as f:
            tail = ''.join(f.readlines()[-15:])
        raise RuntimeError(f'command failed ({proc.returncode}): {" ".join(cmd)}\nlog: {log_path}\n{tail}')
    return time.time() - start


# ------------------------------------------------------------------------------------------------ data
def link_train_hr(grid):
    """One flat folder of the HR training images: the folder itself, or symbolic links to the images of several.

    Raises:
        ValueError: If two folders hold images of the same name.
    """
    if len(grid['train_hr']) == 1:
        return grid['train_hr'][0]
    from basicsr_distill.utils.image_io import list_images
    flat = osp.join(grid['work_dir'], 'data', 'train_hr')
    os.makedirs(flat, exist_ok=True)
    seen = {}
    for folder in grid['train_hr']:
        for path in list_images(folder):
            name = osp.basename(path)
            if name in seen:
                raise ValueError(f'train_hr: {name} is in both {seen[name]} and {folder}; names must be unique')
            seen[name] = folder
            link = osp.join(flat, name)
            if not osp.lexists(link):
                os.symlink(path, link)
    return flat


def pool_size(pool_opt_path):
    """Number of patches of the pool (SRInstanceDataset of the pool option file, from the image headers)."""
    from basicsr_distill.data.sr_instance_dataset import SRInstanceDataset
    opt = grid_lib.read_option_file(pool_opt_path)
    source = SRInstanceDataset(dict(opt['datasets']['train'], scale=opt['scale'], phase='train'))
    return sum(source.num_patches(i) for i in range(source.num_instances))


def pool_option_file(grid, train_hr):
    """The option file select_subset.py reads: the pool as ``datasets.train`` (+ the selection_opt's teacher)."""
    opt = grid_lib.read_option_file(grid['selection_opt']) if grid['selection_opt'] else {}
    opt = grid_lib.absolutize(opt, REPO)
    opt['scale'] = grid['scale']
    opt['datasets'] = {
        'train': {
            'name': 'pool',
            'type': 'SRInstanceDataset',
            'dataroot_gt': train_hr,
            'gt_size': grid['pool']['gt_size'],
            'stride': grid['pool']['stride'],
            'io_backend': {
                'type': 'disk'
            }
        }
    }
    return grid_lib.write_option_file(opt, osp.join(grid['work_dir'], 'options', 'pool.yml'))


# ------------------------------------------------------------------------------------------------ cells
def run_set_cell(cell, grid, ctx):
    """Write the training set of one (method, size); returns its row fields."""
    method = grid['methods'][cell['method']]
    root, log = cell['root'], osp.join(grid['work_dir'], 'logs', cell['id'].replace('/', '__') + '.log')
    values = {
        'train_hr': ctx['train_hr'],
        'size': cell['size'],
        'gt_size': grid['pool']['gt_size'],
        'stride': grid['pool']['stride'],
        'scale': grid['scale']
    }
    complete = osp.isfile(osp.join(root, 'distill.json')) and read_manifest(root).get('complete')
    start = time.time()
    if not complete and method['type'] == 'distill':
        opt = grid_lib.read_option_file(method['opt'])
        opt = grid_lib.deep_merge(opt, grid_lib.fill_placeholders(method['options'], values))
        opt = grid_lib.absolutize(opt, REPO)
        opt['name'] = f'{grid["name"]}_{cell["method"]}_{cell["label"]}'
        opt['name'] += f'_{cell["draw"]}' if cell['draw'] else ''
        opt['manual_seed'] = cell['set_seed']
        opt.setdefault('path', {})['distilled_root'] = root
        opt.setdefault('logger', {})['use_tb_logger'] = False
        path = grid_lib.write_option_file(opt, osp.join(grid['work_dir'], 'options', 'sets',
                                                        f'{osp.basename(root)}.yml'))
        run_logged([sys.executable,
                    osp.join(REPO, 'basicsr_distill', 'train.py'), '-opt', path, '--auto_resume'], grid['work_dir'],
                   log)
    elif not complete:
        cmd = [
            sys.executable,
            osp.join(REPO, 'scripts', 'select_subset.py'), '-opt', ctx['pool_opt'], '--out', root, '--seed',
            str(cell['set_seed'])
        ]
        if method.get('like'):  # the same draw of the like method (its one draw if it has one: the reference)
            cmd += ['--like', grid_lib.like_cell(grid, ctx['sets'], cell)['root']]
        else:
            cmd += ['--ratio', str(cell['size'])]
        run_logged(cmd + [str(a) for a in grid_lib.fill_placeholders(method['args'], values)], REPO, log)
    manifest = read_manifest(root)
    if not manifest.get('complete'):
        raise RuntimeError(f'{root}: the set is not complete after {cell["id"]}; see {log}')
    from basicsr_distill.distilled_set import dataset_size
    return {
        'pairs': manifest['num_pairs'],
        'ratio': manifest['num_pairs'] / ctx['pool'],
        'set_bytes': dataset_size(root)['bytes'],
        'set_time_s': manifest.get('wall_time_s') or (time.time() - start),
        'root': root,
        'reference': bool(method.get('reference'))
    }


def run_train_cell(cell, grid, ctx):
    """Train one arch on one set with one seed, then evaluate it; returns its row fields."""
    arch = grid['archs'][cell['arch']]
    set_cell = cell['set']
    values = {
        'train_hr': ctx['train_hr'],
        'size': set_cell['size'],
        'gt_size': grid['pool']['gt_size'],
        'stride': grid['pool']['stride'],
        'scale': grid['scale']
    }
    opt = grid_lib.read_option_file(arch['opt'])
    opt = grid_lib.absolutize(grid_lib.deep_merge(opt, grid_lib.fill_placeholders(arch['options'], values)), REPO)
    opt['name'], opt['manual_seed'] = cell['name'], cell['seed']
    opt['datasets']['train'].update(dataroot=set_cell['root'], name=osp.basename(set_cell['root']))
    for key in [k for k in opt['datasets'] if k.split('_')[0] == 'val']:
        opt['datasets'].pop(key)  # evaluation is done below, on every test set
    opt.pop('val', None)
    if grid['val_freq']:
        add_validation(opt, grid)
    opt.setdefault('logger', {})['use_tb_logger'] = False
    opt['logger']['save_checkpoint_freq'] = opt['train']['total_iter']
    path = grid_lib.write_option_file(opt, osp.join(grid['work_dir'], 'options', 'train', f'{cell["name"]}.yml'))
    log = osp.join(grid['work_dir'], 'logs', cell['id'].replace('/', '__') + '.log')
    exp = osp.join(grid['work_dir'], 'experiments', cell['name'])
    wall = run_logged(
        [sys.executable, osp.join(REPO, 'basicsr_distill', 'train.py'), '-opt', path, '--auto_resume'],
        grid['work_dir'],
        log,
        threads=ctx.get('threads'))

    from basicsr_distill.utils.checkpoint import load_network
    from basicsr_distill.utils.sr_metrics import parse_train_time
    logs = sorted(glob.glob(osp.join(exp, f'train_{cell["name"]}_*.log')), key=osp.getmtime)
    train_time = parse_train_time(logs[-1])['seconds'] if logs else None
    net = load_network(opt['network_g'], osp.join(exp, 'models', 'net_g_latest.pth'), scale=grid['scale'])
    row = {'train_time_s': train_time, 'train_wall_s': round(wall, 1), 'weights': osp.join(exp, 'models')}
    if grid['val_freq']:
        from basicsr_distill.models.curve_sr_model import CURVE_FILE, read_curve
        row['curve'] = read_curve(osp.join(exp, CURVE_FILE))
    row.update(evaluate_sets(net, grid, ctx))
    return row


def add_validation(opt, grid):
    """Make a train option file validate on every validation set every ``val_freq`` iterations (BasicSR's loop),
    with PSNR on Y (``psnr``) and on RGB (``psnr_rgb``), and record the curve (``model_type: CurveSRModel`` or
    ``CurveSwinIRModel``).

    Raises:
        ValueError: If the option file's ``model_type`` is neither ``SRModel`` nor ``SwinIRModel`` (naming it).
    """
    from basicsr_distill.models.curve_sr_model import CURVE_MODELS
    model_type = opt.get('model_type')
    if model_type not in CURVE_MODELS and model_type not in CURVE_MODELS.values():
        raise ValueError(f'val_freq: the curve needs model_type {" or ".join(CURVE_MODELS)}, the option file has '
                         f'{model_type}; set val_freq: 0 in the preset or use such an option file')
    opt['model_type'] = CURVE_MODELS.get(model_type, model_type)
    scale = grid['scale']
    for index, (name, spec) in enumerate(grid['val_sets'].items()):
        opt['datasets'][f'val_{index}'] = {
            'name': name,
            'type': 'PairedImageDataset',
            'dataroot_gt': spec['hr'],
            'dataroot_lq': spec['lr'],
            'filename_tmpl': spec.get('filename_tmpl', f'{{}}x{scale}'),
            'io_backend': {
                'type': 'disk'
            }
        }
    psnr = {'type': 'calculate_psnr', 'crop_border': scale}
    opt['val'] = {
        'val_freq': grid['val_freq'],
        'save_img': False,
        'pbar': False,
        'metrics': {
            'psnr': dict(psnr, test_y_channel=True),
            'psnr_rgb': dict(psnr, test_y_channel=False)
        }
    }
    return opt


def evaluate_sets(net, grid, ctx, names=None):
    """``{'<set>/<metric>': value}`` of a network on the preset's validation and test sets (or those of ``names``):
    the metrics on Y, and ``psnr_rgb`` (BasicSR's ``calculate_psnr`` on RGB) when ``rgb_psnr`` is on."""
    from basicsr_distill.utils.sr_metrics import evaluate_network
    tests = {
        name: (spec['hr'], spec['lr'])
        for name, spec in grid_lib.eval_sets(grid).items() if names is None or name in names
    }
    if not tests:
        return {}
    result = evaluate_network(net, tests, scale=grid['scale'], metrics=grid['metrics'], device=ctx['device'])
    out = {f'{name}/{m}': res.get(m) for name, res in result['test_sets'].items() for m in grid['metrics']}
    if 'psnr_rgb' in grid_lib.metric_columns(grid):
        rgb = evaluate_network(
            net, tests, scale=grid['scale'], metrics=['psnr'], device=ctx['device'], test_y_channel=False)
        out.update({f'{name}/psnr_rgb': res['psnr'] for name, res in rgb['test_sets'].items()})
    return out


def missing_columns(grid, record):
    """The evaluated sets whose columns a finished train cell lacks (a set or a metric added to the preset later)."""
    columns = grid_lib.metric_columns(grid)
    return [name for name in grid_lib.eval_sets(grid) if any(f'{name}/{m}' not in record for m in columns)]


def complete_evaluation(cell, grid, ctx, store, record):
    """Evaluate the saved weights of a finished train cell on the sets it lacks; returns the updated record (the
    record as it is, with a warning, when its weights are gone)."""
    names = missing_columns(grid, record)
    weights = osp.join(record.get('weights') or '', 'net_g_latest.pth')
    if not names:
        return record
    if not osp.isfile(weights):
        print(
            f'warning: {cell["id"]} has no {names} columns and its weights {weights} are gone: delete '
            f'{store.path(cell)} to retrain it',
            flush=True)
        return record
    from basicsr_distill.utils.checkpoint import load_network
    opt = grid_lib.read_option_file(osp.join(grid['work_dir'], 'options', 'train', f'{cell["name"]}.yml'))
    net = load_network(opt['network_g'], weights, scale=grid['scale'])
    result = {k: v for k, v in record.items() if k not in ('id', 'spec_hash', 'spec')}
    result.update(evaluate_sets(net, grid, ctx, names))
    print(f'{cell["id"]}: evaluated on {names} (added to the preset after it finished)', flush=True)
    return store.save(cell, result)


def bicubic_reference(grid, ctx):
    """The bicubic row: BasicSR's MATLAB-style ``imresize`` evaluated like the trained networks."""
    from basicsr_distill.utils.sr_eval import BicubicSR
    return evaluate_sets(BicubicSR(grid['scale']), grid, dict(ctx, device='cpu'))


def curve_rows(grid, store, trains, rows):
    """One row per (run, validation) of the finished train cells with a curve: the columns of ``curves.csv``."""
    by_id = {(r['arch'], r['method'], r['label'], r.get('set_seed'), r['seed']): r for r in rows}
    out = []
    for cell in trains:
        record = store.load(cell)
        set_cell = cell['set']
        row = by_id.get((cell['arch'], set_cell['method'], set_cell['label'], set_cell['set_seed'], cell['seed']))
        if record is None or row is None:
            continue
        for point in record.get('curve') or []:
            out.append({
                'arch': cell['arch'],
                'method': set_cell['method'],
                'label': set_cell['label'],
                'pairs': row.get('pairs'),
                'set_seed': set_cell['set_seed'],
                'seed': cell['seed'],
                'reference': row.get('reference'),
                'dataset': point['dataset'],
                'iter': point['iter'],
                'psnr': point.get('psnr'),
                'psnr_rgb': point.get('psnr_rgb')
            })
    return out


# ------------------------------------------------------------------------------------------------ outputs
def build_rows(grid, store, sets, trains):
    rows = []
    set_records = {c['id']: store.load(c) for c in sets}
    for cell in trains:
        record, set_record = store.load(cell), set_records.get(cell['set']['id'])
        if record is None or set_record is None:
            continue
        row = {k: set_record.get(k) for k in ('pairs', 'ratio', 'set_bytes', 'set_time_s', 'reference')}
        row.update(
            arch=cell['arch'],
            method=cell['set']['method'],
            label=cell['set']['label'],
            size=cell['set']['size'],
            set_seed=cell['set']['set_seed'],
            seed=cell['seed'])
        row.update({k: v for k, v in record.items() if '/' in k or k in ('train_time_s', 'train_wall_s')})
        rows.append(row)
    return rows


def write_outputs(grid, store, sets, trains, final, included=None):
    """CSV + Markdown from the finished cells (after every train cell); plots and sample grids when ``final``.
    ``included``: per-run rows of an earlier results.csv (``--include_csv``), kept where the work dir has no run of
    the same arch, method, size and seed."""
    tests, metrics, work = list(grid_lib.eval_sets(grid)), grid_lib.metric_columns(grid), grid['work_dir']
    rows = build_rows(grid, store, sets, trains)
    have = {(r['arch'], r['method'], r['label'], r['set_seed'], r['seed']) for r in rows}
    included = included or []
    for row in included:  # an earlier file without set draws: its runs are of the preset's set_seed
        row['set_seed'] = grid['set_seed'] if row.get('set_seed') is None else int(row['set_seed'])
    extra = [
        r for r in included
        if r['method'] != 'bicubic' and (r['arch'], r['method'], r['label'], r['set_seed'], r['seed']) not in have
    ]
    order = list(grid['methods'])
    rows = sorted(extra + rows, key=lambda r: order.index(r['method']))  # stable: the preset's method order
    bicubic = load_bicubic(store, grid) if grid['bicubic_reference'] else None
    if grid['bicubic_reference'] and bicubic is None:  # not computed here: the earlier file's, if it has one
        bicubic = next((r for r in included if r['method'] == 'bicubic'), None)
    bicubic = {k: v for k, v in bicubic.items() if '/' in k and v is not None} if bicubic else None
    csv_rows = rows + ([dict(bicubic, arch='-', method='bicubic')] if bicubic else [])
    report.write_csv(csv_rows, osp.join(work, 'results.csv'), tests, metrics)
    summary = grid_lib.summarize(rows, tests, metrics)
    val = list(grid['val_sets'])
    title = (f'Preset `{osp.relpath(grid["preset"], REPO)}`: {len(rows)} runs, mean ± std over the runs of a row '
             f'(set draws x student seeds: set seeds {grid["set_seeds"]}, the reference has one draw; seeds '
             f'{grid["seeds"]}; "runs (draws, seeds)" counts them, the set draws and the seeds among them); '
             f'PSNR (Y) / SSIM (Y) on the Y channel (BT.601), PSNR (RGB) on RGB, {grid["scale"]}-pixel border '
             f'(BasicSR\'s calculate_psnr / ssim). ' +
             (f'{", ".join(val)} (val) is the validation set: settings are chosen on it; '
              f'{", ".join(grid["test_sets"])} are reported for the chosen ones. ' if val else '') +
             'Set time: the set\'s '
             '`wall_time_s` (distill.json: distillation, or scoring the pool + selecting + writing; no process '
             'start-up). Train time: BasicSR\'s "Time consumed" of the downstream run.' +
             (f' {len(extra)} of the runs are read from an earlier results.csv (--include_csv).' if extra else ''))
    table = report.markdown_table(summary, tests, metrics, bicubic, title, grid_lib.random_baselines(grid), val)
    curves = curve_rows(grid, store, trains, rows)
    if grid['val_freq'] or curves:
        report.write_curves_csv(curves, osp.join(work, 'curves.csv'))
        for name in val:
            table += '\n' + report.time_to_quality_table(grid_lib.time_to_quality(curves, name), name)
    report.write_markdown(table, osp.join(work, 'table.md'))
    if final and summary and 'psnr' in metrics:
        report.plot_psnr(
            summary,
            tests,
            'ratio',
            osp.join(work, 'psnr_vs_ratio.png'),
            'training set size (fraction of the patch pool)',
            bicubic=bicubic)
        report.plot_psnr(
            summary,
            tests,
            'train_time_s_mean',
            osp.join(work, 'psnr_vs_train_time.png'),
            'downstream training wall time (s)',
            logx=False,
            bicubic=bicubic)
    if final:
        for name in grid['methods']:
            done = [c for c in sets if c['method'] == name and store.load(c) is not None]
            if done:
                cell = done[-1]  # the largest size given last
                num = read_manifest(cell['root'])['num_pairs']
                report.sample_grid(cell['root'], osp.join(work, 'samples', f'{name}.png'),
                                   f'{name} {cell["label"]}: HR of {min(16, num)} of {num} pairs')
    return summary


def load_bicubic(store, grid):
    """The bicubic record, or None when it is missing or was evaluated on other sets."""
    try:
        return store.load(bicubic_cell(grid))
    except grid_lib.GridError:
        return None


def load_cell(store, grid, cell):
    """A finished cell's record or None; a stale bicubic record counts as missing (it is recomputed), any other cell
    made with other settings is refused (:meth:`CellStore.load`)."""
    return load_bicubic(store, grid) if cell['id'] == 'ref/bicubic' else store.load(cell)


def bicubic_cell(grid):
    """The bicubic reference: recomputed (it is cheap) whenever the evaluated sets or metrics change."""
    return {
        'id': 'ref/bicubic',
        'kind': 'set',
        'spec': {
            'sets': grid_lib.eval_sets(grid),
            'scale': grid['scale'],
            'columns': grid_lib.metric_columns(grid)
        }
    }


# ------------------------------------------------------------------------------------------------ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', '--opt', required=True, help='benchmark preset (options/benchmark/*.yml)')
    parser.add_argument('--dry_run', action='store_true', help='list the cells and whether they are finished')
    parser.add_argument('--report', action='store_true', help='only rebuild the outputs from the finished cells')
    parser.add_argument('--max_cells', type=int, default=None, help='stop after computing this many cells')
    parser.add_argument(
        '--methods',
        default=None,
        help='comma-separated method names: compute (with --dry_run: list) only their cells; the report still '
        'covers every finished cell')
    parser.add_argument(
        '--seeds', default=None, help='comma-separated student seeds: compute (list) only their downstream runs')
    parser.add_argument(
        '--set_seeds',
        default=None,
        help='comma-separated set seeds: compute (list) only those set draws and their runs')
    parser.add_argument('--archs', default=None, help='comma-separated arch names: compute (list) only their runs')
    parser.add_argument(
        '--include_csv',
        default=None,
        help='an earlier results.csv of this preset: its runs join the outputs where the work dir has none')
    parser.add_argument(
        '--jobs',
        type=int,
        default=1,
        help='downstream runs trained at once (each with cores / jobs threads); training sets are made one at a time')
    args = parser.parse_args(argv)

    grid = grid_lib.load_grid(args.opt, REPO, check_paths=not args.dry_run)
    wanted = None
    if args.methods:  # checked before any work (and before --dry_run lists the cells)
        wanted = set(args.methods.split(','))
        unknown = sorted(wanted - set(grid['methods']))
        if unknown:
            raise ValueError(f'--methods: {unknown} not in the preset {args.opt} (methods: {list(grid["methods"])})')

    def chosen(option, known, cast=str):
        if option is None:
            return None
        names = {cast(v) for v in getattr(args, option).split(',')}
        unknown = sorted(names - set(known))
        if unknown:
            raise ValueError(f'--{option}: {unknown} not in the preset {args.opt} (known: {sorted(known)})')
        return names

    seeds = chosen('seeds' if args.seeds else None, grid['seeds'], int)
    set_seeds = chosen('set_seeds' if args.set_seeds else None, grid['set_seeds'], int)
    archs = chosen('archs' if args.archs else None, grid['archs'])

    def chosen_set(set_cell):
        return ((wanted is None or set_cell['method'] in wanted)
                and (set_seeds is None or set_cell['set_seed'] in set_seeds))

    store = grid_lib.CellStore(grid['work_dir'])
    sets = grid_lib.set_cells(grid)
    needed_sets = grid_lib.with_like_sets(grid, sets, [c for c in sets if chosen_set(c)])  # and the sets they are like

    def selected(cell):
        if cell['id'] == 'ref/bicubic':  # computed with the whole grid only (not a method's piece)
            return wanted is None
        if cell['kind'] == 'set':
            return cell['id'] in needed_sets
        return (chosen_set(cell['set']) and (seeds is None or cell['seed'] in seeds)
                and (archs is None or cell['arch'] in archs))

    trains = grid_lib.train_cells(grid, sets)
    extra = [bicubic_cell(grid)] if grid['bicubic_reference'] else []
    cells = sets + extra + trains
    if extra and load_bicubic(store, grid) is None and osp.isfile(store.path(extra[0])):
        if not args.dry_run and not args.report:  # evaluated on other sets or metrics: recomputed
            os.remove(store.path(extra[0]))
    # every other finished cell (refusing cells made with other settings)
    done = {c['id'] for c in cells if load_cell(store, grid, c) is not None}
    print(
        f'benchmark {grid["name"]}: {len(sets)} training sets, {len(trains)} downstream runs '
        f'({len(grid["archs"])} archs x {len(grid["set_seeds"])} set draws x {len(grid["seeds"])} seeds), validation '
        f'sets {list(grid["val_sets"])}, test sets {list(grid["test_sets"])}; '
        f'{len(done)} of {len(cells)} cells finished; work dir {grid["work_dir"]}',
        flush=True)
    if args.dry_run:
        for cell in filter(selected, cells):
            like_only = cell['id'] in needed_sets and not chosen_set(cell)
            why = '  (a set the named ones are built like)' if like_only else ''
            print(f'  {"done" if cell["id"] in done else "todo"}  {cell["id"]}{why}')
        return 0
    os.makedirs(grid['work_dir'], exist_ok=True)
    included = report.read_csv(args.include_csv, grid['methods']) if args.include_csv else None
    if not args.report:
        import torch
        device = grid['device'] if grid['device'] != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
        ctx = {'train_hr': link_train_hr(grid), 'sets': sets, 'device': device}
        ctx['pool_opt'] = pool_option_file(grid, ctx['train_hr'])
        ctx['pool'] = pool_size(ctx['pool_opt'])
        if args.jobs < 1:
            raise ValueError(f'--jobs must be >= 1, got {args.jobs}')
        if args.jobs > 1:
            ctx['threads'] = max(1, (os.cpu_count() or 1) // args.jobs)
        progress, computed = Progress([c for c in cells if selected(c)], done), 0  # ETA of this piece
        todo = [c for c in cells if c['id'] not in done and selected(c)]
        if args.max_cells is not None:
            todo = todo[:args.max_cells]
        lock = threading.Lock()
        for cell in [c for c in trains if c['id'] in done and selected(c)]:  # sets / metrics added since
            complete_evaluation(cell, grid, ctx, store, store.load(cell))

        def compute(cell):
            start = time.time()
            if cell['kind'] == 'set' and cell['id'] == 'ref/bicubic':
                progress.begin('bicubic reference')
                result = bicubic_reference(grid, ctx)
            elif cell['kind'] == 'set':
                progress.begin(f'training set: {cell["method"]} {cell["label"]}')
                result = run_set_cell(cell, grid, ctx)
            else:
                progress.begin(f'train {cell["arch"]} on {cell["set"]["method"]} {cell["set"]["label"]} '
                               f'seed {cell["seed"]}')
                result = run_train_cell(cell, grid, ctx)
            with lock:
                store.save(cell, result)
                progress.end(cell, time.time() - start)
                if cell['kind'] == 'train':
                    write_outputs(grid, store, sets, trains, final=False, included=included)

        for cell in [c for c in todo if c['kind'] == 'set']:  # the training sets first, one at a time
            compute(cell)
            computed += 1
        train_todo = [c for c in todo if c['kind'] == 'train']
        train_todo.sort(key=lambda c: grid['seeds'].index(c['seed']))  # seed by seed: a partial table compares all
        if args.jobs == 1:
            for cell in train_todo:
                compute(cell)
        else:
            with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
                for future in [pool.submit(compute, cell) for cell in train_todo]:
                    future.result()  # the first failure stops the run (finished cells are kept)
        computed += len(train_todo)
        if args.max_cells is not None and len(todo) < len(cells) - len(done):
            print(f'stopped after {computed} cells (--max_cells); rerun to continue', flush=True)
    complete = all(load_cell(store, grid, c) is not None for c in cells)
    write_outputs(grid, store, sets, trains, final=True, included=included)
    print(
        f'{"finished" if complete else "partial"}: {osp.join(grid["work_dir"], "table.md")}, results.csv, '
        'psnr_vs_ratio.png, psnr_vs_train_time.png, samples/',
        flush=True)
    with open(osp.join(grid['work_dir'], 'table.md'), encoding='utf-8') as f:
        print(f.read())
    return 0

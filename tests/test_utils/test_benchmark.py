"""The benchmark runner (basicsr_distill.benchmark, CLI scripts/benchmark.py) and its grid / report helpers.

The end-to-end test runs a real tiny grid (IDC + the random baseline on 6 T91 images from two folders, EDSR for
a few iterations with two seeds, evaluated on Set5) through the BasicSR loops, stops it half-way, and checks that the
second run computes only the cells that were missing.
"""
import csv
import glob
import importlib.util
import json
import os
import os.path as osp
import pytest
import shutil
import yaml

import basicsr_distill  # noqa: F401  (compat fixes before basicsr / torchvision)

# isort: split
from conftest import REPO, data_path

from basicsr_distill.benchmark import grid as grid_lib
from basicsr_distill.benchmark import report

SCRIPT = osp.join(REPO, 'scripts', 'benchmark.py')


def _load_script():
    """The runner module (patched by the tests); scripts/benchmark.py must be its CLI, with the same ``main``."""
    from basicsr_distill.benchmark import runner
    spec = importlib.util.spec_from_file_location('benchmark_script', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main is runner.main
    return runner


# ------------------------------------------------------------------------------------------------ helpers
def test_fill_placeholders_keeps_types():
    values = {'size': 0.05, 'train_hr': '/data/hr', 'gt_size': 64}
    out = grid_lib.fill_placeholders({'a': '{size}', 'b': ['{train_hr}/x', 3], 'c': {'d': '{gt_size}'}}, values)
    assert out == {'a': 0.05, 'b': ['/data/hr/x', 3], 'c': {'d': 64}}
    with pytest.raises(KeyError):
        grid_lib.fill_placeholders('{nope}/x', values)


def test_deep_merge_and_delete():
    base = {'train': {'total_iter': 10, 'optim': {'lr': 1}}, 'val': {'x': 1}}
    merged = grid_lib.deep_merge(base, {'train': {'optim': {'lr': 2}}, 'val': None})
    assert merged == {'train': {'total_iter': 10, 'optim': {'lr': 2}}}
    assert base['train']['optim']['lr'] == 1  # the input is not modified


def test_summarize_mean_std_by_hand():
    rows = [{
        'arch': 'A',
        'method': 'm',
        'label': 'r0.1',
        'size': 0.1,
        'pairs': 5,
        'ratio': 0.1,
        'set_bytes': 1,
        'set_time_s': 2,
        'seed': s,
        'Set5/psnr': v,
        'train_time_s': t
    } for s, v, t in ((0, 30.0, 10), (1, 31.0, 12), (2, 32.0, 14))]
    (row, ) = grid_lib.summarize(rows, ['Set5'], ['psnr'])
    assert row['runs'] == 3 and row['draws'] == 1 and row['student_seeds'] == 3
    assert row['Set5/psnr_mean'] == pytest.approx(31.0)
    assert row['Set5/psnr_std'] == pytest.approx(1.0)  # sample std of 30, 31, 32
    assert row['train_time_s_mean'] == pytest.approx(12.0) and row['train_time_s_std'] == pytest.approx(2.0)
    text = report.markdown_table([row], ['Set5'], ['psnr'], bicubic={'Set5/psnr': 28.4312})
    assert '| 31.00 ± 1.00 |' in text and '| 12 ± 2 |' in text and '28.43' in text and '10.0 %' in text
    assert '| runs (draws, seeds) |' in text and '| 3 (1, 3) |' in text
    # an unfinished grid: 3 set draws at seed 0 and seed 1 of draw 0 are 4 runs of 3 draws and 2 seeds
    grid_rows = [dict(rows[0], set_seed=d, seed=s) for d, s in ((0, 0), (1, 0), (2, 0), (0, 1))]
    (row, ) = grid_lib.summarize(grid_rows, ['Set5'], ['psnr'])
    assert (row['runs'], row['draws'], row['student_seeds']) == (4, 3, 2)
    assert '| 4 (3, 2) |' in report.markdown_table([row], ['Set5'], ['psnr'])


def test_table_says_full_minus_random_by_hand():

    def row(method, psnr5, psnr14, runs, reference=False):
        return {
            'arch': 'A',
            'method': method,
            'label': 'r0.01',
            'pairs': 3,
            'ratio': 0.01,
            'set_bytes': 1,
            'set_time_s': 1,
            'runs': runs,
            'reference': reference,
            'Set5/psnr_mean': psnr5,
            'Set5/psnr_std': 0.0,
            'Set14/psnr_mean': psnr14,
            'Set14/psnr_std': 0.0,
            'train_time_s_mean': 1.0,
            'train_time_s_std': 0.0
        }

    summary = [row('full', 30.50, 27.55, 2, True), row('random', 30.33, 27.41, 3), row('idc', 30.6, 27.6, 3)]
    assert report.reference_gaps(summary, ['Set5', 'Set14']) == [
        'A: full minus random r0.01 (3 pairs), PSNR: Set5 +0.17 dB, Set14 +0.14 dB (2 / 3 runs).'
    ]
    assert 'full minus random r0.01' in report.markdown_table(summary, ['Set5', 'Set14'], ['psnr'])
    assert report.reference_gaps(summary[1:], ['Set5']) == []  # no reference row: no line
    # two random baselines (two sizes under two names): one line each, in summary order; others are not baselines
    summary.append(dict(row('random_1pct', 30.10, 27.20, 3), label='r0.01', pairs=1))
    assert report.reference_gaps(summary, ['Set5'], ('random', 'random_1pct')) == [
        'A: full minus random r0.01 (3 pairs), PSNR: Set5 +0.17 dB (2 / 3 runs).',
        'A: full minus random_1pct r0.01 (1 pairs), PSNR: Set5 +0.40 dB (2 / 3 runs).'
    ]
    assert 'full minus random_1pct' in report.markdown_table(summary, ['Set5'], ['psnr'], baselines=('random_1pct', ))


def test_random_baselines_are_the_random_select_methods():
    methods = {
        'full': {
            'type': 'select',
            'args': ['--method', 'random'],
            'reference': True
        },
        'random': {
            'type': 'select',
            'args': ['--method', 'random']
        },
        'random_teacher_hr': {
            'type': 'select',
            'args': ['--method', 'random_teacher_hr']
        },
        'plain': {
            'type': 'select',
            'args': []
        },  # select_subset.py's default rule is random
        'herding': {
            'type': 'select',
            'args': ['--method', 'herding', '--features', 'random']
        },
        'idc': {
            'type': 'distill',
            'args': []
        }
    }
    assert grid_lib.selection_rule(methods['herding']) == 'herding'
    assert grid_lib.selection_rule(methods['idc']) is None
    assert grid_lib.random_baselines({'methods': methods}) == ('random', 'plain')
    converged = grid_lib.load_grid(
        osp.join(REPO, 'options', 'benchmark', 'cpu_291_converged.yml'), REPO, check_paths=False)
    assert grid_lib.random_baselines(converged) == ('random', 'random_1pct')


def test_converged_preset_shares_option_blocks_through_yaml_anchors():
    """The anchored blocks of cpu_291_converged resolve to the settings their comments name, and filling one method's
    placeholders leaves the methods that share its block untouched (safe_load shares aliased mappings)."""
    methods = grid_lib.load_grid(
        osp.join(REPO, 'options', 'benchmark', 'cpu_291_converged.yml'), REPO, check_paths=False)['methods']
    distill = {name: method['options'].get('distill', {}) for name, method in methods.items()}
    base, gentle = distill['idc'], distill['idc_psnr_bic']
    assert {
        k: v
        for k, v in gentle.items() if gentle[k] != base.get(k)
    } == {
        'init': 'psnr_bic',
        'iters_per_instance': 150,
        'warmup_iters': 50,
        'assign_iters': 50,
        'optim': {
            'type': 'Adam',
            'lr': 2e-3,
            'betas': [0.9, 0.999]
        }
    }
    assert distill['idc_psnr_bic_lowpass'] == {**gentle, 'update_lowpass': 2}
    assert distill['idc_psnr_bic_lowpass_half'] == {**gentle, 'update_lowpass': 2, 'real_side': 'psnr_bic'}
    assert distill['idc_1pct'] == distill['idc_psnr_bic_lowpass_half']
    assert distill['idc_psnr_bic_lr5e-4']['optim']['lr'] == 5e-4
    assert 'pair_exclude_source' not in distill['idc_noise'] and distill['idc_noise']['init'] == 'noise'
    assert distill['gsdd_psnr_bic'] == {**distill['gsdd'], 'pair_crop_candidates': 3}
    assert distill['gsdd_psnr_bic_init'] == {
        **distill['gsdd'], 'iters_per_class': 1,
        'pair_crop_candidates': 3,
        'optim': {
            'type': 'Adam',
            'lr': 0
        }
    }
    assert methods['gsdd_imdn']['options']['network_g']['type'] == 'IMDN'
    # the Algorithm-1 budget study: T, warm-up and assignment (10 % / 20 % of T) are all that vary with the budget
    t150, t600, t2000 = (distill[f'idc_alg1_noise_t{t}_1pct'] for t in (150, 600, 2000))
    assert t150['init'] == 'noise' and t150['optim']['lr'] == 1e-2 and 'update_lowpass' not in t150
    for steps, opt in ((150, t150), (600, t600), (2000, t2000)):
        assert opt == {**t150, 'iters_per_instance': steps, 'warmup_iters': steps // 10, 'assign_iters': steps // 5}
        batches = 96 // opt['instances_per_step']
        name = f'idc_alg1_noise_t{steps}_1pct'
        assert methods[name]['options']['train']['total_iter'] == batches * steps, name
    assert distill['idc_alg1_real_t2000_1pct'] == {**t2000, 'init': 'real'}
    assert methods['idc_alg1_real_init_1pct']['like'] == 'idc_alg1_real_t2000_1pct'
    assert methods['gsdd']['options']['network_g']['type'] == 'SRGANGenerator'
    assert methods['gsdd_1pct']['options'] == methods['gsdd']['options']
    assert (methods['gsdd']['sizes'], methods['gsdd_1pct']['sizes']) == ([97], [32])
    filled = grid_lib.fill_placeholders(methods['gsdd_1pct']['options'], {'size': 32, 'train_hr': 'x', 'gt_size': 64})
    assert filled['distill']['ipc'] == 32 and methods['gsdd']['options']['distill']['ipc'] == '{size}'


def test_mean_std_single_and_missing():
    assert grid_lib.mean_std([2.5]) == (2.5, 0.0)
    mean, std = grid_lib.mean_std([None])
    assert mean != mean and std != std  # nan


def _write_preset(path, work_dir, hr_dirs, **changes):
    preset = {
        'name': 'tiny',
        'work_dir': str(work_dir),
        'scale': 4,
        'train_hr': [str(d) for d in hr_dirs],
        'pool': {
            'gt_size': 64,
            'stride': 64
        },
        'selection_opt': 'options/distill/idc_demo.yml',
        'set_seed': 0,
        'seeds': [0, 1],
        'test_sets': {
            'Set5': {
                'hr': data_path('data', 'val', 'Set5', 'HR'),
                'lr': data_path('data', 'val', 'Set5', 'LR_bicubic', 'X4')
            }
        },
        'metrics': ['psnr', 'ssim'],
        'device': 'cpu',
        'methods': {
            'idc': {
                'type': 'distill',
                'opt': 'options/distill/idc_demo.yml',
                'sizes': [0.05, 0.2],
                'options': {
                    'datasets': {
                        'train': {
                            'dataroot_gt': '{train_hr}',
                            'gt_size': '{gt_size}',
                            'stride': '{stride}'
                        }
                    },
                    'distill': {
                        'ratio': '{size}',
                        'iters_per_instance': 3,
                        'warmup_iters': 1,
                        'assign_iters': 2,
                        'assign_steps': 1,
                        'real_batch_size': 16
                    },
                    'train': {
                        'total_iter': 18
                    },
                    'logger': {
                        'print_freq': 100,
                        'save_checkpoint_freq': 100
                    }
                }
            },
            'random': {
                'type': 'select',
                'args': ['--method', 'random'],
                'like': 'idc'
            },
        },
        'archs': {
            'EDSR_tiny': {
                'opt': 'options/train/EDSR/train_EDSR_x4_distilled_demo.yml',
                'options': {
                    'network_g': {
                        'num_feat': 8,
                        'num_block': 1
                    },
                    'datasets': {
                        'train': {
                            'gt_size': '{gt_size}',
                            'batch_size_per_gpu': 2
                        }
                    },
                    'train': {
                        'total_iter': 4,
                        'scheduler': {
                            'periods': [4]
                        }
                    },
                    'logger': {
                        'print_freq': 100
                    }
                }
            }
        },
    }
    preset.update(changes)
    with open(path, 'w') as f:
        yaml.safe_dump(preset, f, sort_keys=False)
    return str(path)


@pytest.fixture(scope='module')
def hr_dirs(tmp_path_factory):
    """Two folders of 3 small real T91 images each (the runner links them into one flat folder)."""
    root = tmp_path_factory.mktemp('bench_hr')
    t91 = sorted(glob.glob(osp.join(data_path('data', 'train', 't91'), '*.png')))
    dirs = []
    for k in range(2):
        folder = root / f'part{k}'
        folder.mkdir()
        for path in t91[3 * k:3 * k + 3]:
            shutil.copy(path, folder)
        dirs.append(folder)
    return dirs


def test_load_grid_errors(tmp_path, hr_dirs):
    good = _write_preset(tmp_path / 'good.yml', tmp_path / 'w', hr_dirs)
    grid = grid_lib.load_grid(good, REPO)
    assert grid['methods']['random']['sizes'] == [0.05, 0.2]  # like: idc
    bad = _write_preset(tmp_path / 'bad.yml', tmp_path / 'w', hr_dirs, typo_key=1)
    with pytest.raises(grid_lib.GridError, match=r'bad.yml: unknown keys \[\'typo_key\'\]'):
        grid_lib.load_grid(bad, REPO)
    methods = {'random': {'type': 'select', 'like': 'idc'}}
    bad = _write_preset(tmp_path / 'bad2.yml', tmp_path / 'w', hr_dirs, methods=methods)
    with pytest.raises(grid_lib.GridError, match="methods.random.like='idc' must name a method defined before"):
        grid_lib.load_grid(bad, REPO)
    bad = _write_preset(tmp_path / 'bad3.yml', tmp_path / 'w', [tmp_path / 'missing'])
    with pytest.raises(FileNotFoundError, match='train_hr folder .*missing does not exist'):
        grid_lib.load_grid(bad, REPO)


def test_presets_parse():
    for path in sorted(glob.glob(osp.join(REPO, 'options', 'benchmark', '*.yml'))):
        grid = grid_lib.load_grid(path, REPO, check_paths=False)
        sets = grid_lib.set_cells(grid)
        assert grid_lib.train_cells(grid, sets)
        assert any(grid['methods'][c['method']].get('reference') for c in sets)  # a full-set reference row
        for method in grid['methods'].values():
            if method['type'] == 'distill':
                assert osp.isfile(method['opt'])
    cpu = grid_lib.load_grid(osp.join(REPO, 'options', 'benchmark', 'cpu_291.yml'), REPO, check_paths=False)
    assert set(cpu['methods']) >= {'idc', 'gsdd', 'minimax', 'random', 'herding', 'kcenter', 'dcsr', 'psnr_bic'}


# ------------------------------------------------------------------------------------------------ end to end
def test_runner_resumes_half_finished_grid(tmp_path, hr_dirs, monkeypatch):
    work = tmp_path / 'work'
    preset = _write_preset(tmp_path / 'tiny.yml', work, hr_dirs)
    script = _load_script()
    calls = []
    real_run = script.run_logged

    def recording_run(cmd, cwd, log_path, threads=None):
        calls.append(' '.join(cmd) + (f' [threads {threads}]' if threads else ''))
        return real_run(cmd, cwd, log_path, threads)

    monkeypatch.setattr(script, 'run_logged', recording_run)
    # first run stops after 3 cells: the 2 IDC sets and random r0.05
    assert script.main(['-opt', preset, '--max_cells', '3']) == 0
    finished = sorted(os.listdir(work / 'cells'))
    assert finished == ['set__idc__r0.05.json', 'set__idc__r0.2.json', 'set__random__r0.05.json']
    assert len(calls) == 3
    stamps = {name: os.stat(work / 'cells' / name).st_mtime_ns for name in finished}
    idc_manifest = json.load(open(work / 'sets' / 'idc_r0.05' / 'distill.json'))
    assert idc_manifest['complete'] and idc_manifest['method'] == 'idc'
    random_manifest = json.load(open(work / 'sets' / 'random_r0.05' / 'distill.json'))
    assert random_manifest['num_pairs'] == idc_manifest['num_pairs']  # like: idc

    calls.clear()
    assert script.main(['-opt', preset, '--jobs', '2']) == 0  # the downstream runs two at a time
    assert not any('idc' in c and 'train.py' in c and '/sets/' in c for c in calls)  # no set recomputed
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert all(c.endswith(f'[threads {threads}]') for c in calls if '/options/train/' in c)
    selections = [c for c in calls if 'select_subset.py' in c]
    assert len(selections) == 1 and 'random_r0.2' in selections[0]  # only the missing set
    assert sum('train.py' in c for c in calls) == 2 * 2 * 2  # 2 methods x 2 sizes x 2 seeds
    for name, stamp in stamps.items():
        assert os.stat(work / 'cells' / name).st_mtime_ns == stamp

    with open(work / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    runs = [r for r in rows if r['method'] != 'bicubic']
    assert len(runs) == 8 and {r['seed'] for r in runs} == {'0', '1'}
    for row in rows:
        assert 5 < float(row['Set5/psnr']) < 40 and 0 < float(row['Set5/ssim']) <= 1
    table = (work / 'table.md').read_text()
    assert table.count('| EDSR_tiny |') == 4 and ' ± ' in table and '| bicubic |' in table
    for name in ('psnr_vs_ratio.png', 'psnr_vs_train_time.png', 'samples/idc.png', 'samples/random.png'):
        assert (work / name).stat().st_size > 1000, name

    calls.clear()  # a third run does nothing but the report
    assert script.main(['-opt', preset]) == 0
    assert calls == []

    # runs of an earlier results.csv (another work dir) join the outputs where this work dir has none
    earlier = tmp_path / 'earlier.csv'
    first = next(r for r in runs if r['method'] == 'idc' and r['seed'] == '0')
    with open(earlier, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([dict(first, seed='7'), dict(first, method='gone'), first] +
                         [r for r in rows if r['method'] == 'bicubic'])
    assert script.main(['-opt', preset, '--report', '--include_csv', str(earlier)]) == 0
    assert calls == []
    with open(work / 'results.csv') as f:
        merged = [r for r in csv.DictReader(f) if r['method'] != 'bicubic']
    assert len(merged) == 9 and {r['method'] for r in merged} == {'idc', 'random'}  # seed 7 added, 'gone' left out
    assert sum(r['seed'] == '0' and r['method'] == 'idc' and r['label'] == first['label'] for r in merged) == 1
    assert next(r for r in merged if r['seed'] == '7') == dict(first, seed='7')  # as read: 2310, not 2310.0
    assert first['set_bytes'].isdigit() and first['train_time_s'].isdigit()
    table = (work / 'table.md').read_text()
    assert '1 of the runs are read from an earlier results.csv' in table and '| bicubic |' in table
    idc_row = next(line for line in table.splitlines() if f"| idc | {first['label']} |" in line)
    assert '| 3 (1, 3) |' in idc_row  # seeds 0, 1 and 7 of one set draw
    bicubic_value = next(r for r in rows if r['method'] == 'bicubic')['Set5/psnr']
    os.remove(work / 'cells' / 'ref__bicubic.json')  # not computed in this work dir: the earlier file's row is used
    assert script.main(['-opt', preset, '--report', '--include_csv', str(earlier)]) == 0
    assert f'| bicubic | - | - | - | - | - | - | {float(bicubic_value):.2f} |' in (work / 'table.md').read_text()

    # changing a cell's settings is refused rather than mixed into the table
    changed = _write_preset(tmp_path / 'tiny.yml', work, hr_dirs, set_seed=1)
    with pytest.raises(grid_lib.GridError, match='made with other settings'):
        script.main(['-opt', changed])


def test_runner_methods_computes_only_the_named_methods(tmp_path, hr_dirs, capsys):
    work = tmp_path / 'work'
    preset = _write_preset(tmp_path / 'tiny.yml', work, hr_dirs)
    script = _load_script()
    with pytest.raises(ValueError, match=r"--methods: \['bogus'\] not in the preset"):
        script.main(['-opt', preset, '--methods', 'idc,bogus'])
    with pytest.raises(ValueError, match=r"--methods: \['bogus'\] not in the preset"):
        script.main(['-opt', preset, '--methods', 'bogus', '--dry_run'])
    assert not work.exists()  # refused before anything was written
    capsys.readouterr()
    assert script.main(['-opt', preset, '--methods', 'random', '--dry_run']) == 0
    listed = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith('  todo')]
    trains = [c for c in listed if c.startswith('train/')]
    assert trains and all('/random/' in cell_id for cell_id in trains)
    # random is drawn like idc, so idc's sets are built too (not trained)
    assert {c
            for c in listed
            if c.startswith('set/')} == {'set/idc/r0.05', 'set/idc/r0.2', 'set/random/r0.05', 'set/random/r0.2'}
    assert script.main(['-opt', preset, '--methods', 'idc', '--max_cells', '3']) == 0
    # the two IDC sets and one IDC downstream run: nothing of `random`
    assert sorted(os.listdir(
        work / 'cells')) == ['set__idc__r0.05.json', 'set__idc__r0.2.json', 'train__EDSR_tiny__idc__r0.05__seed0.json']


def test_with_like_sets_follows_the_like_chain_draw_by_draw(tmp_path, hr_dirs):
    methods = yaml.safe_load(open(_write_preset(tmp_path / 'a.yml', tmp_path / 'w', hr_dirs)))['methods']
    methods['random_teacher_hr'] = {'type': 'select', 'args': ['--method', 'random_teacher_hr'], 'like': 'random'}
    grid = grid_lib.load_grid(
        _write_preset(tmp_path / 'b.yml', tmp_path / 'w', hr_dirs, methods=methods, set_seeds=[0, 3]), REPO)
    sets = grid_lib.set_cells(grid)
    by_id = {c['id']: c for c in sets}
    assert grid_lib.like_cell(grid, sets, by_id['set/idc/r0.2/set3']) is None
    assert grid_lib.like_cell(grid, sets, by_id['set/random_teacher_hr/r0.2/set3'])['id'] == 'set/random/r0.2/set3'
    ids = grid_lib.with_like_sets(grid, sets, [by_id['set/random_teacher_hr/r0.2/set3']])
    assert ids == {'set/random_teacher_hr/r0.2/set3', 'set/random/r0.2/set3', 'set/idc/r0.2/set3'}
    assert grid_lib.with_like_sets(grid, sets, [by_id['set/idc/r0.05']]) == {'set/idc/r0.05'}


def test_runner_builds_the_like_set_of_a_named_control(tmp_path, hr_dirs, capsys):
    """Regression: --methods random_teacher_hr --set_seeds 1 failed (no draw 1 of random) after the sets before it."""
    methods = yaml.safe_load(open(_write_preset(tmp_path / 'a.yml', tmp_path / 'w', hr_dirs)))['methods']
    methods['random'] = {'type': 'select', 'args': ['--method', 'random'], 'sizes': [0.2]}
    methods['random_teacher_hr'] = {'type': 'select', 'args': ['--method', 'random_teacher_hr'], 'like': 'random'}
    del methods['idc']
    work = tmp_path / 'work'
    preset = _write_preset(tmp_path / 'tiny.yml', work, hr_dirs, methods=methods, set_seeds=[0, 1])
    script = _load_script()
    capsys.readouterr()
    assert script.main(['-opt', preset, '--methods', 'random_teacher_hr', '--set_seeds', '1', '--dry_run']) == 0
    out = capsys.readouterr().out
    assert '  todo  set/random/r0.2/set1  (a set the named ones are built like)' in out
    assert 'train/EDSR_tiny/random/' not in out
    assert script.main(['-opt', preset, '--methods', 'random_teacher_hr', '--set_seeds', '1', '--max_cells', '2']) == 0
    cells = sorted(os.listdir(work / 'cells'))
    assert cells == ['set__random__r0.2__set1.json', 'set__random_teacher_hr__r0.2__set1.json']


# ------------------------------------------------------------------------------------------------ validation, draws
def test_time_to_quality_by_hand():

    def points(method, values, set_seed=0, seed=0, reference=False, dataset='Val'):
        return [{
            'arch': 'A',
            'method': method,
            'label': 'r1',
            'set_seed': set_seed,
            'seed': seed,
            'reference': reference,
            'dataset': dataset,
            'iter': 500 * (k + 1),
            'psnr': v
        } for k, v in enumerate(values)]

    curves = (
        points('full', [27.0, 28.0, 28.5, 28.6], reference=True) + points('full', [27.2, 28.2, 28.6, 28.8], seed=1) +
        points('small', [27.9, 28.6, 28.7, 28.7]) + points('small', [28.0, 28.5, 28.7, 28.7], set_seed=1) +
        points('slow', [20.0, 21.0, 22.0, 22.0]) + points('full', [99.0] * 4, dataset='Other', reference=True))
    rows = {row['method']: row for row in grid_lib.time_to_quality(curves, 'Val')}
    assert rows['full']['final'] == pytest.approx(28.7) and rows['full']['target'] == pytest.approx(28.6)
    assert rows['full']['iters'] == 2000 and rows['full']['runs'] == 2 and rows['full']['last_iter'] == 2000
    assert rows['small']['iters'] == 1500  # mean over its two draws: 27.95, 28.55, 28.70 (>= 28.6 at 1500)
    assert rows['slow']['iters'] is None and rows['slow']['target'] == pytest.approx(28.6)
    text = report.time_to_quality_table(list(rows.values()), 'Val')
    assert '| A | small | r1 | 2 | 28.70 | 2000 | 28.60 | 1500 |' in text and '| A | slow | r1 | 1 |' in text
    assert text.splitlines()[-1].endswith('| - |')  # slow never reaches it


def _tiny_val_set(root):
    """Two bundled Set5 images (HR and x4 LR) as a stand-in validation set (``<root>/HR``, ``<root>/LR``)."""
    for sub, names in (('HR', ('baby.png', 'bird.png')), ('LR', ('babyx4.png', 'birdx4.png'))):
        os.makedirs(root / sub, exist_ok=True)
        src = data_path('data', 'val', 'Set5', 'HR' if sub == 'HR' else osp.join('LR_bicubic', 'X4'))
        for name in names:
            shutil.copy(osp.join(src, name), root / sub)
    return {'hr': str(root / 'HR'), 'lr': str(root / 'LR')}


def test_runner_validation_curve_rgb_psnr_and_set_draws(tmp_path, hr_dirs, monkeypatch):
    """Set draws (set_seeds), a validation set with BasicSR's validation loop every 2 iterations (the curve), RGB
    PSNR beside Y, and a test set added later evaluated from the saved weights without retraining."""
    work = tmp_path / 'work'
    val = _tiny_val_set(tmp_path / 'val')
    methods = {
        'full': {
            'type': 'select',
            'args': ['--method', 'random'],
            'sizes': [1.0],
            'reference': True
        },
        'random': {
            'type': 'select',
            'args': ['--method', 'random'],
            'sizes': [0.2]
        },
        'random_teacher_hr': {
            'type': 'select',
            'args': ['--method', 'random_teacher_hr'],
            'like': 'random'
        }
    }
    preset = _write_preset(
        tmp_path / 'tiny.yml',
        work,
        hr_dirs,
        methods=methods,
        seeds=[0],
        set_seeds=[0, 1],
        val_sets={'Val': val},
        val_freq=2)
    script = _load_script()
    calls = []
    real_run = script.run_logged

    def recording_run(cmd, cwd, log_path, threads=None):
        calls.append(' '.join(cmd))
        return real_run(cmd, cwd, log_path, threads)

    monkeypatch.setattr(script, 'run_logged', recording_run)
    assert script.main(['-opt', preset, '--set_seeds', '0', '--methods', 'full,random']) == 0
    assert sorted(os.listdir(work / 'cells')) == [  # the bicubic row comes with a run of the whole grid
        'set__full__r1.json', 'set__random__r0.2.json', 'train__EDSR_tiny__full__r1__seed0.json',
        'train__EDSR_tiny__random__r0.2__seed0.json'
    ]
    assert script.main(['-opt', preset]) == 0  # the second draw, and random_teacher_hr (like random, draw by draw)
    cells = sorted(os.listdir(work / 'cells'))
    assert 'set__random__r0.2__set1.json' in cells and 'train__EDSR_tiny__random__r0.2__set1__seed0.json' in cells
    assert not any('full' in c and 'set1' in c for c in cells)  # the reference has one draw
    drawn = [json.load(open(work / 'sets' / name / 'distill.json')) for name in ('random_r0.2', 'random_r0.2_set1')]
    assert [p['name'] for p in drawn[0]['pairs']] != [p['name'] for p in drawn[1]['pairs']]
    like = next(c for c in calls if 'random_teacher_hr_r0.2_set1' in c and 'select_subset.py' in c)
    assert like.split('--like ')[1].split()[0].endswith('random_r0.2_set1') and '--seed 1' in like

    with open(work / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    runs = [r for r in rows if r['method'] != 'bicubic']
    assert len(runs) == 5 and {(r['method'], r['set_seed']) for r in runs} >= {('random', '0'), ('random', '1')}
    for row in rows:
        for col in ('Val/psnr', 'Val/psnr_rgb', 'Set5/psnr', 'Set5/psnr_rgb'):
            assert 5 < float(row[col]) < 40, col
        assert float(row['Set5/psnr_rgb']) != float(row['Set5/psnr'])  # RGB and Y are different measurements
    with open(work / 'curves.csv') as f:
        curve = [r for r in csv.DictReader(f) if r['method'] == 'random' and r['set_seed'] == '1']
    assert [(r['dataset'], r['iter']) for r in curve] == [('Val', '2'), ('Val', '4')]
    final = next(r for r in runs if r['method'] == 'random' and r['set_seed'] == '1')
    # BasicSR's validation loop at the last iteration and the runner's own evaluation agree (the same weights)
    assert float(curve[-1]['psnr']) == pytest.approx(float(final['Val/psnr']), abs=1e-3)
    assert float(curve[-1]['psnr_rgb']) == pytest.approx(float(final['Val/psnr_rgb']), abs=1e-3)
    table = (work / 'table.md').read_text()
    assert 'Val (val) PSNR (Y)' in table and 'Set5 PSNR (RGB)' in table and 'Time to quality on Val' in table
    random_line = next(line for line in table.splitlines() if line.startswith('| EDSR_tiny | random | r0.2 |'))
    assert '| 2 (2, 1) |' in random_line  # 2 runs over 2 set draws, one student seed

    # adding a test set keeps every finished cell: the saved weights are evaluated on it, nothing is retrained
    cells = [name for name in cells if name != 'ref__bicubic.json']  # the bicubic row is recomputed (cheap)
    stamps = {name: json.load(open(work / 'cells' / name))['spec_hash'] for name in cells}
    calls.clear()
    test_sets = {
        'Set5': {
            'hr': data_path('data', 'val', 'Set5', 'HR'),
            'lr': data_path('data', 'val', 'Set5', 'LR_bicubic', 'X4')
        },
        'Set5b': {
            'hr': data_path('data', 'val', 'Set5', 'HR')
        }
    }
    preset = _write_preset(
        tmp_path / 'tiny.yml',
        work,
        hr_dirs,
        methods=methods,
        seeds=[0],
        set_seeds=[0, 1],
        val_sets={'Val': val},
        val_freq=2,
        test_sets=test_sets)
    assert script.main(['-opt', preset]) == 0
    assert calls == []
    assert {name: json.load(open(work / 'cells' / name))['spec_hash'] for name in cells} == stamps
    with open(work / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert all(5 < float(r['Set5b/psnr_rgb']) < 40 for r in rows)


def test_runner_seed_and_arch_filters(tmp_path, hr_dirs, capsys):
    work = tmp_path / 'work'
    archs = yaml.safe_load(open(_write_preset(tmp_path / 'a.yml', work, hr_dirs)))['archs']
    archs['RCAN_tiny'] = {
        'opt': archs['EDSR_tiny']['opt'],
        'options': dict(archs['EDSR_tiny']['options'], network_g={
            'type': 'RCAN',
            'num_group': 1
        })
    }
    preset = _write_preset(tmp_path / 'tiny.yml', work, hr_dirs, archs=archs, set_seeds=[0, 3])
    script = _load_script()
    capsys.readouterr()
    assert script.main(['-opt', preset, '--dry_run', '--seeds', '1', '--archs', 'RCAN_tiny', '--set_seeds', '3']) == 0
    listed = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith('  todo')]
    trains = [c for c in listed if c.startswith('train/')]
    assert trains and all(c.startswith('train/RCAN_tiny/') and c.endswith('/set3/seed1') for c in trains)
    assert {c
            for c in listed if c.startswith('set/')
            } == {'set/idc/r0.05/set3', 'set/idc/r0.2/set3', 'set/random/r0.05/set3', 'set/random/r0.2/set3'}
    with pytest.raises(ValueError, match=r"--seeds: \[7\] not in the preset"):
        script.main(['-opt', preset, '--dry_run', '--seeds', '7'])
    bad = _write_preset(tmp_path / 'bad.yml', work, hr_dirs, set_seeds=[1, 2])
    with pytest.raises(grid_lib.GridError, match='set_seeds must be a non-empty list that holds set_seed'):
        grid_lib.load_grid(bad, REPO)


def test_add_validation_keeps_the_model_family(tmp_path):
    """The curve model replaces SRModel and SwinIRModel (whose test pads to the window) by their recording
    counterparts; another model type is refused naming it."""
    from basicsr.utils.registry import MODEL_REGISTRY
    from basicsr_distill.models.curve_sr_model import CurveMixin
    script = _load_script()
    val = _tiny_val_set(tmp_path / 'val')
    grid = {'scale': 4, 'val_freq': 500, 'val_sets': {'Kodak24': val}}
    for given, wanted in (('SRModel', 'CurveSRModel'), ('SwinIRModel', 'CurveSwinIRModel')):
        opt = script.add_validation({'model_type': given, 'datasets': {'train': {}}}, grid)
        assert opt['model_type'] == wanted and issubclass(MODEL_REGISTRY.get(wanted), (CurveMixin, ))
        assert issubclass(MODEL_REGISTRY.get(wanted), MODEL_REGISTRY.get(given))
        assert opt['datasets']['val_0']['filename_tmpl'] == '{}x4' and opt['val']['val_freq'] == 500
        assert opt['val']['metrics']['psnr'][
            'test_y_channel'] and not opt['val']['metrics']['psnr_rgb']['test_y_channel']
    with pytest.raises(ValueError, match='the option file has ESRGANModel'):
        script.add_validation({'model_type': 'ESRGANModel', 'datasets': {}}, grid)

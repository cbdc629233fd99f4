"""Plot the student's PSNR against the distillation budget (steps per image T), from the runner's ``results.csv``.

The Algorithm-1 budget study of ``options/benchmark/cpu_291_converged.yml`` distils the same 96 images with IDC at
several T (one method per T); this script draws, per test set, one line per series (the same settings at each T,
e.g. ``init: noise``), the point the mean over the rows of a method (set draws x student seeds) and the bar one sample
standard deviation, and each control (a set without distillation steps: the teacher-HR control, the full pool, a
start) as a horizontal line. A series point may be a start control at T = 0.

Usage::

    python scripts/plot_budget.py docs/benchmark/cpu_291_converged/issue27_1pct/results.csv \\
        --out docs/figures/cpu_291_converged_budget.png --sets Kodak24,Set5,Set14 --arch EDSR_f32b4

``--series 'label=method@T,method@T'`` and ``--control method`` (both repeatable) replace the defaults, which are the
budget study's methods; ``--xlabel`` names the budget's unit when it is not IDC's steps per image. GSDD's budget
(iterations per pseudo-class)::

    python scripts/plot_budget.py docs/benchmark/cpu_291_converged/issue27_1pct/results.csv \\
        --out docs/benchmark/cpu_291_converged/issue27_1pct/budget_gsdd.png --arch EDSR_f32b4 \\
        --series 'GSDD=gsdd_psnr_bic_init_1pct@0,gsdd_psnr_bic_1pct@100,gsdd_psnr_bic_x10_1pct@1000' \\
        --control random_teacher_hr_1pct --control idc_1pct --control full --xlabel 'GSDD iterations per pseudo-class'
"""
import argparse
import importlib.util
import os.path as osp

_spec = importlib.util.spec_from_file_location('plot_benchmark', osp.join(osp.dirname(__file__), 'plot_benchmark.py'))
_plot_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_plot_benchmark)
read_results = _plot_benchmark.read_results

#: label -> [(method, T)] of the budget study in options/benchmark/cpu_291_converged.yml
DEFAULT_SERIES = {
    'IDC, init: noise (Algorithm 1)': [('idc_alg1_noise_t150_1pct', 150), ('idc_alg1_noise_t600_1pct', 600),
                                       ('idc_alg1_noise_t2000_1pct', 2000)],
    'IDC, init: real': [('idc_alg1_real_init_1pct', 0), ('idc_alg1_real_t2000_1pct', 2000)],
}
#: the controls drawn as horizontal lines (same 96 pairs, no distillation steps), and the full pool
DEFAULT_CONTROLS = ['random_1pct', 'random_teacher_hr_1pct', 'idc_init_1pct', 'idc_1pct', 'full']
#: the x axis of IDC's budget
DEFAULT_XLABEL = 'distillation steps per image T'


def parse_series(specs):
    """``['label=m1@150,m2@600', ...]`` -> ``{label: [(m1, 150), (m2, 600)]}``; None or empty -> the defaults.

    Raises:
        ValueError: An entry without ``=``, a point without ``@T`` or with a T that is not a non-negative integer
            (naming the entry).
    """
    if not specs:
        return dict(DEFAULT_SERIES)
    series = {}
    for spec in specs:
        label, sep, points = spec.partition('=')
        parsed = []
        for point in (p.strip() for p in points.split(',') if p.strip()):
            method, at, steps = point.rpartition('@')
            if not at or not method or not steps.isdigit():
                raise ValueError(f'--series {spec!r}: point {point!r} is not method@T (T: steps per image, >= 0)')
            parsed.append((method, int(steps)))
        if not sep or not label.strip() or not parsed:
            raise ValueError(f"--series {spec!r}: expected 'label=method@T,method@T'")
        series[label.strip()] = parsed
    return series


def series_points(res, points):
    """The finished points of one series, sorted by T: ``[(T, mean, std, n)]`` (methods without rows are left out).

    Args:
        res (dict): :func:`plot_benchmark.read_results` of one test set.
        points (list[tuple[str, int]]): ``(method, T)``.
    """
    return sorted((steps, *res[method][1:]) for method, steps in points if method in res)


def plot(path, out, test_sets, series, controls, arch=None, xlabel=DEFAULT_XLABEL):
    """Write the figure (PNG): one panel per test set, ``xlabel`` under each; returns the output path.

    Raises:
        FileNotFoundError / KeyError / ValueError: From :func:`read_results` (no CSV, no column for a test set,
            several archs and none named).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(test_sets), figsize=(5.5 * len(test_sets), 4.2), squeeze=False)
    for ax, test_set in zip(axes[0], test_sets):
        res = read_results(path, test_set, arch=arch)
        for label, points in series.items():
            finished = series_points(res, points)
            if finished:
                xs, ys, es, _ = zip(*finished)
                ax.errorbar(xs, ys, yerr=es, marker='o', capsize=3, label=label)
        for i, method in enumerate(m for m in controls if m in res):
            pairs, mean, _, n = res[method]
            ax.axhline(
                mean,
                color=f'C{(i + len(series)) % 10}',
                linestyle='--',
                linewidth=1,
                label=f'{method} ({pairs} pairs, {n} run{"s" if n > 1 else ""}): {mean:.2f} dB')
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f'{test_set} PSNR, Y channel (dB)')
        ax.set_title(test_set)
        ax.grid(True, alpha=0.3)
    return _plot_benchmark.save_figure(fig, axes, out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('csv', help='the runner\'s results.csv')
    parser.add_argument('--out', required=True, help='the PNG to write')
    parser.add_argument('--sets', default='Kodak24,Set5,Set14', help='test sets, comma-separated')
    parser.add_argument('--series', action='append', help="'label=method@T,method@T' (repeatable)")
    parser.add_argument('--control', action='append', help='a method drawn as a horizontal line (repeatable)')
    parser.add_argument('--arch', help='the student arch (needed when the CSV holds several)')
    parser.add_argument('--xlabel', default=DEFAULT_XLABEL, help=f'the budget axis (default: {DEFAULT_XLABEL!r})')
    args = parser.parse_args(argv)
    out = plot(args.csv, args.out, [s for s in args.sets.split(',') if s], parse_series(args.series), args.control
               or DEFAULT_CONTROLS, args.arch, args.xlabel)
    print(f'wrote {out}')


if __name__ == '__main__':
    main()

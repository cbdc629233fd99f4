"""Plot a benchmark's student PSNR against the training-set size, from the runner's ``results.csv``.

One panel per test set; one line per family of training sets (a method at each size it was run at, e.g. ``random``
at 3 % and ``random_1pct`` at 1 %), the point the mean over the rows (student seeds, set draws) and the bar one
sample standard deviation; the full pool as a horizontal line.

Usage::

    python scripts/plot_benchmark.py docs/benchmark/cpu_291_converged/results.csv \\
        --out docs/figures/cpu_291_converged_psnr.png --sets Set5,Set14

``--line 'label=method_a,method_b'`` (repeatable) replaces the default families, which are those of
``options/benchmark/cpu_291_converged.yml``.
"""
import argparse
import csv
import os
import os.path as osp
import statistics
from collections import defaultdict

#: the arch column of a row that trains no student (the runner writes bicubic as '-')
NO_ARCH = (None, '', '-')
#: label -> methods of options/benchmark/cpu_291_converged.yml (the 1 % and the 3 % one of each family)
DEFAULT_LINES = {
    'random real pairs': ['random_1pct', 'random'],
    'random real LR, teacher HR': ['random_teacher_hr_1pct', 'random_teacher_hr'],
    'IDC start (informative LR, teacher HR)': ['idc_init_1pct', 'idc_psnr_bic_init'],
    'IDC (best setting)': ['idc_1pct', 'idc_psnr_bic_lowpass_half'],
    'GSDD start (informative crops, inverted)': ['gsdd_psnr_bic_init_1pct', 'gsdd_psnr_bic_init'],
    'GSDD (informative crops)': ['gsdd_psnr_bic_1pct', 'gsdd_psnr_bic'],
}


def read_results(path, test_set, metric='psnr', arch=None):
    """Mean, sample std and count of ``<test_set>/<metric>`` per method and pair count, for one student arch.

    Args:
        path (str): The runner's ``results.csv``.
        test_set (str): A test set column prefix (``Set5``).
        metric (str): The metric (``psnr``: Y-channel PSNR in dB, as the runner writes it). Default: ``'psnr'``.
        arch (str | None): The student arch whose rows are read (rows without one, such as bicubic's ``-``, always
            are); None reads the CSV's only arch. Default: None.

    Returns:
        dict: ``{method: (pairs (int, 0 for a method without a set such as bicubic), mean, std, n)}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        KeyError: The CSV has no column ``<test_set>/<metric>`` (the message lists the columns it has).
        ValueError: ``arch`` is None and the CSV holds several archs, or ``arch`` is not among them (naming them):
            rows of two students are never averaged together.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'results CSV not found: {path}')
    with open(path, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    column = f'{test_set}/{metric}'
    if rows and column not in rows[0]:
        raise KeyError(f'{path} has no column {column!r}; it has {sorted(rows[0])}')
    archs = sorted({row['arch'] for row in rows if row.get('arch') not in NO_ARCH})
    if (arch is None and len(archs) > 1) or (arch is not None and arch not in archs):
        raise ValueError(f'{path} holds the archs {archs}: name one with --arch' if arch is
                         None else f'{path} has no rows of arch {arch!r}; it has {archs}')
    values, pairs = defaultdict(list), {}
    for row in rows:
        if arch is not None and row.get('arch') not in NO_ARCH and row['arch'] != arch:
            continue
        if row.get(column) in (None, ''):
            continue
        values[row['method']].append(float(row[column]))
        pairs[row['method']] = int(row['pairs']) if row.get('pairs') else 0
    out = {}
    for method, vals in values.items():
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out[method] = (pairs[method], statistics.fmean(vals), std, len(vals))
    return out


def plot(path, out, test_sets, lines, full='full', arch=None):
    """Write the figure (PNG) of :func:`read_results` for each test set; returns the output path."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(test_sets), figsize=(5.5 * len(test_sets), 4.2), squeeze=False)
    for ax, test_set in zip(axes[0], test_sets):
        res = read_results(path, test_set, arch=arch)
        for label, methods in lines.items():
            points = sorted(res[m][:3] for m in methods if m in res)
            if points:
                xs, ys, es = zip(*points)
                ax.errorbar(xs, ys, yerr=es, marker='o', capsize=3, label=label)
        if full in res:
            pairs, mean = res[full][:2]
            ax.axhline(mean, color='grey', linestyle='--', label=f'{full} pool ({pairs} pairs): {mean:.2f} dB')
        ticks = sorted({res[m][0] for methods in lines.values() for m in methods if m in res})
        ax.set_xscale('log')
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel('training pairs (log scale)')
        ax.set_ylabel(f'{test_set} PSNR, Y channel (dB)')
        ax.set_title(test_set)
        ax.grid(True, which='both', alpha=0.3)
    return save_figure(fig, axes, out)


def save_figure(fig, axes, out):
    """The legend of the first panel, a tight layout, ``out`` (PNG, 120 dpi; its folder made) written, the figure
    closed; returns ``out``."""
    import matplotlib.pyplot as plt
    axes[0][0].legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def parse_lines(specs):
    """``['label=m1,m2', ...]`` -> ``{label: [m1, m2]}``; None or empty -> :data:`DEFAULT_LINES`.

    Raises:
        ValueError: An entry without ``=`` or without a method (names the entry).
    """
    if not specs:
        return dict(DEFAULT_LINES)
    lines = {}
    for spec in specs:
        label, sep, methods = spec.partition('=')
        names = [m.strip() for m in methods.split(',') if m.strip()]
        if not sep or not label.strip() or not names:
            raise ValueError(f"--line {spec!r}: expected 'label=method_a,method_b'")
        lines[label.strip()] = names
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('csv', help='the runner\'s results.csv')
    parser.add_argument('--out', required=True, help='the PNG to write')
    parser.add_argument('--sets', default='Set5,Set14', help='test sets, comma-separated (default: Set5,Set14)')
    parser.add_argument('--line', action='append', help="'label=method_a,method_b' (repeatable)")
    parser.add_argument('--arch', help='the student arch (needed when the CSV holds several)')
    args = parser.parse_args(argv)
    out = plot(args.csv, args.out, [s for s in args.sets.split(',') if s], parse_lines(args.line), arch=args.arch)
    print(f'wrote {out}')


if __name__ == '__main__':
    main()

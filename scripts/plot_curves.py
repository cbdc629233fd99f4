"""Plot the student's validation PSNR against training iterations (time to quality), from the runner's ``curves.csv``.

The benchmark runner (``scripts/benchmark.py`` with ``val_freq`` in the preset) validates each student every
``val_freq`` iterations and writes ``<work_dir>/curves.csv``. This script draws, per arch, one line per training set
(method and size): the mean PSNR over its runs (set draws x student seeds) at each iteration, the band one sample
standard deviation; a dotted horizontal line marks the target, the reference's (full pool's) final PSNR minus 0.1 dB,
and the legend gives the iterations each set needs to reach it (``-``: not reached).

Usage::

    python scripts/plot_curves.py results/benchmark/cpu_291_converged/curves.csv \\
        --out docs/figures/cpu_291_converged_curves.png [--dataset Kodak24] [--metric psnr]
"""
import argparse
import os.path as osp
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..')))

from basicsr_distill.benchmark.grid import TARGET_DB, time_to_quality  # noqa: E402
from basicsr_distill.benchmark.report import read_curves_csv  # noqa: E402


def mean_curves(rows, dataset, metric='psnr'):
    """``{(arch, method, label): [(iter, mean, std, n)]}`` over the runs of each set, at the iterations all its runs
    reached.

    Args:
        rows (list[dict]): From :func:`basicsr_distill.benchmark.report.read_curves_csv`.
        dataset (str): The validation set.
        metric (str): ``psnr`` (Y channel) or ``psnr_rgb``. Default: ``'psnr'``.

    Raises:
        ValueError: If no row is of ``dataset`` (naming the ones there are).
    """
    runs = defaultdict(dict)
    for row in rows:
        if row['dataset'] == dataset and row.get(metric) is not None:
            key = (row['arch'], row['method'], row['label'])
            runs[key].setdefault((row['set_seed'], row['seed']), {})[row['iter']] = row[metric]
    if not runs:
        raise ValueError(f'no curve of {dataset!r}; the file has {sorted({r["dataset"] for r in rows})}')
    out = {}
    for key, by_run in runs.items():
        iters = sorted(set.intersection(*(set(r) for r in by_run.values())))
        values = [[r[it] for r in by_run.values()] for it in iters]
        out[key] = [(it, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                    for it, v in zip(iters, values)]
    return out


def plot(rows, dataset, out, metric='psnr'):
    """Write the PNG (one panel per arch); returns ``out``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    curves = mean_curves(rows, dataset, metric)
    ttq = {(r['arch'], r['method'], r['label']): r for r in time_to_quality(rows, dataset)}
    archs = list(dict.fromkeys(key[0] for key in curves))
    fig, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 4.5), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for key, points in curves.items():
            if key[0] != arch:
                continue
            its, means, stds, counts = zip(*points)
            reached = ttq.get(key, {}).get('iters') if metric == 'psnr' else None
            label = f'{key[1]} {key[2]} (n={counts[-1]})' + (f', target at {reached}' if reached is not None else
                                                             (', target not reached' if metric == 'psnr' else ''))
            line, = ax.plot(its, means, marker='.', label=label)
            ax.fill_between(
                its, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                color=line.get_color(),
                alpha=0.15)
        target = next((r['target'] for r in ttq.values() if r['arch'] == arch and r['target'] is not None), None)
        if target is not None and metric == 'psnr':
            ax.axhline(target, linestyle=':', color='k', linewidth=1, label=f'full pool final - {TARGET_DB} dB')
        ax.set_xlabel('student training iteration')
        ax.set_ylabel(f'{dataset} PSNR (dB, {"Y channel" if metric == "psnr" else "RGB"})')
        ax.set_title(f'{arch} on {dataset} (mean ± std over set draws x seeds)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('csv', help="the runner's curves.csv")
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--dataset', default='Kodak24', help='the validation set of the curves (default: Kodak24)')
    parser.add_argument('--metric', default='psnr', choices=('psnr', 'psnr_rgb'), help='psnr (Y) or psnr_rgb')
    args = parser.parse_args(argv)
    if not osp.isfile(args.csv):
        raise FileNotFoundError(f'curves CSV not found: {args.csv} (the runner writes it when the preset has val_freq)')
    print(plot(read_curves_csv(args.csv), args.dataset, args.out, args.metric))
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Outputs of the benchmark: CSV (one row per run), Markdown table (mean +- std over set draws x student seeds), plots
and sample grids.

Plots use matplotlib's Agg backend (no display needed); images are read with
:func:`basicsr_distill.utils.image_io.read_rgb`.
"""
import csv
import math
import numpy as np
import os
import os.path as osp

from basicsr_distill.benchmark.grid import write_text_atomic
from basicsr_distill.utils.image_io import read_rgb

CSV_FIELDS = ('arch', 'method', 'label', 'size', 'pairs', 'ratio', 'set_bytes', 'set_time_s', 'set_seed', 'seed',
              'train_time_s', 'train_wall_s', 'reference')
CURVE_FIELDS = ('arch', 'method', 'label', 'pairs', 'set_seed', 'seed', 'reference', 'dataset', 'iter', 'psnr',
                'psnr_rgb')
#: column headings of the metrics: what each is computed on
METRIC_HEADINGS = {'psnr': 'PSNR (Y)', 'psnr_rgb': 'PSNR (RGB)', 'ssim': 'SSIM (Y)', 'niqe': 'NIQE', 'lpips': 'LPIPS'}


def write_csv(rows, path, test_sets, metrics, fields=None):
    """One line per (arch, method, size, set draw, seed) run, plus the bicubic reference rows; written atomically.
    ``<set>/psnr`` is PSNR on Y, ``<set>/psnr_rgb`` on RGB. ``fields``: other leading columns than the runs'.
    Returns ``path``."""
    import io
    fields = list(fields or CSV_FIELDS) + [f'{t}/{m}' for t in test_sets for m in metrics]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ('' if row.get(k) is None else row.get(k)) for k in fields})
    return write_text_atomic(path, buf.getvalue())


def read_csv(path, methods):
    """The per-run rows of an earlier ``results.csv`` (as :func:`write_csv` writes it), for runs measured elsewhere.

    Args:
        path (str): A ``results.csv`` of the same preset (another machine, an earlier work dir).
        methods (Iterable[str]): The preset's methods; rows of others are left out (the bicubic row is kept).

    Returns:
        list[dict]: One per run (and the bicubic row, method ``'bicubic'``): numbers as int where written as one
        (``pairs``, ``seed``, ``set_bytes``, ...), else as float, so :func:`write_csv` writes an included run back as
        it was; ``reference`` as bool, '' as None.

    Raises:
        FileNotFoundError: ``path`` missing. ValueError: a file without the per-run columns, naming it.
    """
    with open(path, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    if rows and not {'arch', 'method', 'label', 'seed'} <= set(rows[0]):
        raise ValueError(f'{path} is not a benchmark results.csv (needs arch, method, label, seed columns)')
    out, methods = [], set(methods) | {'bicubic'}
    for row in rows:
        if row['method'] not in methods:
            continue
        parsed = {}
        for key, value in row.items():
            if value == '':
                parsed[key] = None
            elif key in ('arch', 'method', 'label'):
                parsed[key] = value
            elif key == 'reference':
                parsed[key] = value == 'True'
            elif key in ('pairs', 'seed', 'set_seed'):
                parsed[key] = int(value)
            else:
                parsed[key] = int(value) if value.lstrip('-').isdigit() else float(value)
        out.append(parsed)
    return out


def _pm(mean, std, digits):
    if mean is None or not math.isfinite(mean):
        return '-'
    return f'{mean:.{digits}f} ± {std:.{digits}f}' if std is not None and math.isfinite(std) else f'{mean:.{digits}f}'


def markdown_table(summary, test_sets, metrics, bicubic=None, title=None, baselines=('random', ), val_sets=()):
    """The comparison table: one row per (arch, method, size), metric columns as mean ± std over its runs (set draws
    x seeds; ``runs (draws, seeds)`` counts the runs, the distinct set draws and the distinct student seeds among
    them, so an unfinished grid such as 4 (3, 2) shows); column headings say what each metric is on (``PSNR (Y)``,
    ``PSNR (RGB)``) and mark validation sets.

    Args:
        summary (list[dict]): From :func:`basicsr_distill.benchmark.grid.summarize`.
        test_sets (list[str]), metrics (list[str]): Column order.
        bicubic (dict | None): ``{'<test set>/<metric>': value}`` for a bicubic row.
        title (str | None): A line written above the table.
        baselines (tuple[str]): Methods of the "full minus random" lines (see :func:`reference_gaps`).
        val_sets (Sequence[str]): The validation sets among ``test_sets`` (headed ``<name> (val)``).

    Returns:
        str: Markdown text.
    """
    digits = {'psnr': 2, 'psnr_rgb': 2, 'ssim': 4, 'niqe': 2, 'lpips': 4}
    cols = [f'{t}/{m}' for t in test_sets for m in metrics]
    head = ['arch', 'method', 'size', 'pairs', 'ratio of pool', 'set (MB)', 'set time (s)', 'runs (draws, seeds)'] + \
        [f'{t}{" (val)" if t in val_sets else ""} {METRIC_HEADINGS.get(m, m.upper())}' for t in test_sets
         for m in metrics] + ['train time (s)']
    lines = ([title, ''] if title else []) + ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in summary:
        cells = [
            row['arch'], row['method'] + (' (reference)' if row.get('reference') else ''), row['label'],
            str(row['pairs']), f'{100 * row["ratio"]:.1f} %' if row.get('ratio') is not None else '-',
            f'{row["set_bytes"] / 2**20:.1f}' if row.get('set_bytes') is not None else '-',
            f'{row["set_time_s"]:.0f}' if row.get('set_time_s') is not None else '-',
            f'{row["runs"]} ({row.get("draws") or 1}, {row.get("student_seeds") or 1})'
        ]
        cells += [_pm(row[f'{c}_mean'], row[f'{c}_std'], digits.get(c.split('/')[-1], 3)) for c in cols]
        cells.append(_pm(row['train_time_s_mean'], row['train_time_s_std'], 0))
        lines.append('| ' + ' | '.join(cells) + ' |')
    if bicubic:
        cells = ['-', 'bicubic', '-', '-', '-', '-', '-', '-']
        cells += [
            f'{bicubic[c]:.{digits.get(c.split("/")[-1], 3)}f}' if bicubic.get(c) is not None else '-' for c in cols
        ]
        lines.append('| ' + ' | '.join(cells + ['-']) + ' |')
    gaps = reference_gaps(summary, test_sets, baselines)
    return '\n'.join(lines + ([''] + gaps if gaps else [])) + '\n'


def reference_gaps(summary, test_sets, baselines=('random', )):
    """Lines "full minus random" per arch and baseline size: is the student data-bound at that size?

    For every arch with a reference row (``reference: true``, the full set) and every row of a ``baselines`` method
    of that arch, in summary order: the reference's mean PSNR minus the baseline's, per test set, in dB, with both
    seed counts.

    Args:
        summary (list[dict]): From :func:`basicsr_distill.benchmark.grid.summarize`.
        test_sets (list[str]): Test set names.
        baselines (tuple[str]): The methods compared with the reference (the runner passes every select method
            whose rule is ``random``). Default: ``('random',)``.

    Returns:
        list[str]: One Markdown line each (empty without a reference or a baseline row, or without PSNR).
    """
    lines = []
    for ref in (r for r in summary if r.get('reference')):
        for row in (r for r in summary if r['method'] in baselines and r['arch'] == ref['arch']):
            diffs = [(t, ref.get(f'{t}/psnr_mean'), row.get(f'{t}/psnr_mean')) for t in test_sets]
            diffs = [f'{t} {a - b:+.2f} dB' for t, a, b in diffs if a is not None and b is not None]
            if diffs:
                lines.append(f'{ref["arch"]}: {ref["method"]} minus {row["method"]} {row["label"]} '
                             f'({row["pairs"]} pairs), PSNR: {", ".join(diffs)} ({ref["runs"]} / {row["runs"]} '
                             'runs).')
    return lines


def write_curves_csv(rows, path):
    """``curves.csv``: one line per (run, validation) of the time-to-quality curves (``psnr`` on Y, ``psnr_rgb``
    on RGB, dB); written atomically."""
    return write_csv(rows, path, [], [], fields=CURVE_FIELDS)


def read_curves_csv(path):
    """The rows of a ``curves.csv`` (:func:`write_curves_csv`): numbers as int / float, '' as None.

    Raises:
        FileNotFoundError: ``path`` missing. ValueError: a file without the curve columns, naming it.
    """
    with open(path, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    if rows and not set(CURVE_FIELDS) <= set(rows[0]):
        raise ValueError(f'{path} is not a benchmark curves.csv (needs the columns {list(CURVE_FIELDS)})')
    out = []
    for row in rows:
        parsed = {k: (None if v == '' else v) for k, v in row.items()}
        for key in ('pairs', 'set_seed', 'seed', 'iter'):
            parsed[key] = None if parsed[key] is None else int(parsed[key])
        for key in ('psnr', 'psnr_rgb'):
            parsed[key] = None if parsed[key] is None else float(parsed[key])
        parsed['reference'] = parsed['reference'] == 'True'
        out.append(parsed)
    return out


def time_to_quality_table(ttq, val_set):
    """Markdown of :func:`basicsr_distill.benchmark.grid.time_to_quality`: per (arch, method, size) the iterations
    to reach the reference's final validation PSNR (Y) minus 0.1 dB."""
    if not ttq:
        return ''
    lines = [
        f'Time to quality on {val_set} (PSNR on Y, mean curve over the runs of a row): the first validated iteration '
        'whose mean PSNR is at least the reference\'s final PSNR - 0.1 dB ("-": not reached).', '',
        '| arch | method | size | runs | final PSNR (Y) | at iteration | target | iterations to target |',
        '|---|---|---|---|---|---|---|---|'
    ]
    for row in ttq:
        target = f'{row["target"]:.2f}' if row['target'] is not None else '- (no reference)'
        lines.append(f'| {row["arch"]} | {row["method"]}{" (reference)" if row["reference"] else ""} | '
                     f'{row["label"]} | {row["runs"]} | {row["final"]:.2f} | {row["last_iter"]} | {target} | '
                     f'{row["iters"] if row["iters"] is not None else "-"} |')
    return '\n'.join(lines) + '\n'


def write_markdown(text, path):
    """Write the table of :func:`markdown_table` (atomically)."""
    write_text_atomic(path, text)


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_psnr(summary, test_sets, x_key, path, xlabel, logx=True, bicubic=None):
    """PSNR (mean ± std over runs: set draws x student seeds) against ``x_key`` (``'ratio'`` or
    ``'train_time_s_mean'``), one panel per test set and arch, one line per method; the reference (full set) methods
    as dashed lines, bicubic as a dotted line."""
    plt = _pyplot()
    archs = list(dict.fromkeys(row['arch'] for row in summary))
    fig, axes = plt.subplots(
        len(archs), len(test_sets), figsize=(5.2 * len(test_sets), 3.8 * len(archs)), squeeze=False)
    for i, arch in enumerate(archs):
        rows = [r for r in summary if r['arch'] == arch]
        methods = list(dict.fromkeys(r['method'] for r in rows))
        for j, test in enumerate(test_sets):
            ax = axes[i][j]
            col = f'{test}/psnr'
            for method in methods:
                points = sorted((r[x_key], r[f'{col}_mean'], r[f'{col}_std'], r.get('reference')) for r in rows
                                if r['method'] == method and r.get(x_key) is not None)
                if not points:
                    continue
                xs, ys, es, ref = zip(*points)
                if ref[0] and x_key == 'ratio':
                    ax.axhline(ys[0], linestyle='--', color='k', linewidth=1, label=f'{method} ({xs[0]:.0%})')
                    continue
                ax.errorbar(xs, ys, yerr=es, marker='o', capsize=3, label=method, linestyle='--' if ref[0] else '-')
            if bicubic and bicubic.get(col) is not None:
                ax.axhline(bicubic[col], linestyle=':', color='gray', linewidth=1, label='bicubic')
            if logx:
                ax.set_xscale('log')
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f'{test} PSNR (dB, Y channel)')
            ax.set_title(f'{arch} on {test}')
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=min(len(labels), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    os.makedirs(osp.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sample_grid(set_root, path, title, num=16, cols=8):
    """A PNG of ``num`` HR samples of a distilled set (evenly spaced in its pair order), ``cols`` per row.

    Args:
        set_root (str): A distilled-set folder (``hr/`` holds the PNGs).
        path (str): Output PNG.
        title (str): Figure title (method and size).

    Raises:
        FileNotFoundError: If the set has no HR image.
    """
    plt = _pyplot()
    from basicsr_distill.distilled_set import pair_paths, read_manifest
    names = [p['name'] for p in read_manifest(set_root)['pairs']]
    if not names:
        raise FileNotFoundError(f'{set_root}: no pair to show')
    picks = [names[int(k)] for k in np.linspace(0, len(names) - 1, min(num, len(names)))]
    rows = math.ceil(len(picks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    for ax, name in zip(axes.flat, picks):
        # back to the 8-bit RGB samples of the PNG (exact: read_rgb scales 8-bit by 1/255), which imshow shows as is
        ax.imshow(np.round(read_rgb(pair_paths(set_root, name)['hr']) * 255).astype(np.uint8))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(osp.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

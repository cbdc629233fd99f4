"""``scripts/plot_curves.py``: mean curves over runs from the runner's ``curves.csv`` (hand-computed) and the PNG."""
import importlib.util
import os.path as osp
import pytest
from conftest import REPO

from basicsr_distill.benchmark import report  # isort: skip  (after conftest, as the other tests)

_spec = importlib.util.spec_from_file_location('plot_curves', osp.join(REPO, 'scripts', 'plot_curves.py'))
plot_curves = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_curves)


def _rows():
    rows = []
    for method, reference, runs in (('full', True, {
        (0, 0): [27.0, 28.0, 28.7]
    }), ('idc', False, {
        (0, 0): [28.0, 28.5, 28.6],
        (1, 0): [28.2, 28.7],
        (0, 1): [28.1, 28.6, 28.7]
    })):
        for (set_seed, seed), values in runs.items():
            for k, value in enumerate(values):
                rows.append({
                    'arch': 'A',
                    'method': method,
                    'label': 'r0.01',
                    'pairs': 96,
                    'set_seed': set_seed,
                    'seed': seed,
                    'reference': reference,
                    'dataset': 'Kodak24',
                    'iter': 500 * (k + 1),
                    'psnr': value,
                    'psnr_rgb': value - 1.5
                })
    return rows


def test_mean_curves_by_hand_and_png(tmp_path):
    path = report.write_curves_csv(_rows(), str(tmp_path / 'curves.csv'))
    rows = report.read_curves_csv(path)
    assert rows[0]['iter'] == 500 and rows[0]['reference'] is True and rows[0]['psnr_rgb'] == pytest.approx(25.5)
    curves = plot_curves.mean_curves(rows, 'Kodak24')
    # idc: three runs (two set draws, two seeds); the run of draw 1 stops at 1000, so 1500 is left out
    its, means, stds, counts = zip(*curves[('A', 'idc', 'r0.01')])
    assert its == (500, 1000) and counts == (3, 3)
    assert means == pytest.approx((28.1, 28.6)) and stds == pytest.approx((0.1, 0.1))
    assert curves[('A', 'full', 'r0.01')][-1] == (1500, 28.7, 0.0, 1)
    out = tmp_path / 'curves.png'
    assert plot_curves.main([path, '--out', str(out)]) == 0 and out.stat().st_size > 5000
    assert plot_curves.main([path, '--out', str(tmp_path / 'rgb.png'), '--metric', 'psnr_rgb']) == 0
    with pytest.raises(ValueError, match=r"no curve of 'Set5'; the file has \['Kodak24'\]"):
        plot_curves.mean_curves(rows, 'Set5')
    with pytest.raises(FileNotFoundError, match='curves CSV not found'):
        plot_curves.main([str(tmp_path / 'none.csv'), '--out', str(out)])

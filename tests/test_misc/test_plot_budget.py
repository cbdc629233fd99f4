"""``scripts/plot_budget.py``: series specs, the points of a series (hand-computed means), the PNG."""
import importlib.util
import os.path as osp
import pytest
from conftest import REPO

_spec = importlib.util.spec_from_file_location('plot_budget', osp.join(REPO, 'scripts', 'plot_budget.py'))
plot_budget = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_budget)

CSV = """arch,method,label,size,pairs,seed,Kodak24/psnr,Set5/psnr
EDSR,full,r1,1.0,100,0,27.8,30.5
EDSR,alg1_t2000,r0.01,0.01,10,0,27.0,29.0
EDSR,alg1_t2000,r0.01,0.01,10,1,27.2,29.4
EDSR,alg1_t150,r0.01,0.01,10,0,26.0,28.0
EDSR,teacher_hr,r0.01,0.01,10,0,27.5,30.3
"""


def test_series_specs():
    assert plot_budget.parse_series(None) == plot_budget.DEFAULT_SERIES
    assert plot_budget.parse_series(['noise = a@150, b@2000']) == {'noise': [('a', 150), ('b', 2000)]}
    assert plot_budget.parse_series(['x=m@t@0']) == {'x': [('m@t', 0)]}  # the last @ splits
    with pytest.raises(ValueError, match="point 'a' is not method@T"):
        plot_budget.parse_series(['noise=a'])
    with pytest.raises(ValueError, match="point 'a@-5' is not method@T"):
        plot_budget.parse_series(['noise=a@-5'])
    with pytest.raises(ValueError, match="expected 'label=method@T,method@T'"):
        plot_budget.parse_series(['noise='])


def test_series_points_are_sorted_by_steps_and_skip_unfinished_methods(tmp_path):
    path = tmp_path / 'results.csv'
    path.write_text(CSV)
    res = plot_budget.read_results(str(path), 'Kodak24')
    points = plot_budget.series_points(res, [('alg1_t2000', 2000), ('not_run', 600), ('alg1_t150', 150)])
    assert [p[0] for p in points] == [150, 2000]
    steps, mean, std, n = points[1]
    assert (steps, n) == (2000, 2) and mean == pytest.approx(27.1) and std == pytest.approx(0.141421, abs=1e-6)
    assert points[0][1:] == (26.0, 0.0, 1)


def test_the_figure(tmp_path):
    path = tmp_path / 'results.csv'
    path.write_text(CSV)
    out = tmp_path / 'fig' / 'budget.png'
    plot_budget.main([
        str(path), '--out',
        str(out), '--sets', 'Kodak24,Set5', '--series', 'noise=alg1_t150@150,alg1_t2000@2000', '--control',
        'teacher_hr', '--control', 'full'
    ])
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(KeyError, match="has no column 'Set14/psnr'"):
        plot_budget.main([str(path), '--out', str(out), '--sets', 'Set14'])


def test_the_figure_of_one_arch(tmp_path):
    path = tmp_path / 'results.csv'
    path.write_text(CSV + 'RCAN,teacher_hr,r0.01,0.01,10,0,27.6,30.1\n')
    out = tmp_path / 'budget.png'
    with pytest.raises(ValueError, match='name one with --arch'):
        plot_budget.main([str(path), '--out', str(out), '--sets', 'Kodak24'])
    plot_budget.main([str(path), '--out', str(out), '--sets', 'Kodak24', '--arch', 'EDSR'])
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_the_budget_axis_is_named(tmp_path, monkeypatch):
    path = tmp_path / 'results.csv'
    path.write_text(CSV)
    labels = []

    def save_figure(fig, axes, out):
        labels.extend(ax.get_xlabel() for ax in axes[0])
        return out

    monkeypatch.setattr(plot_budget._plot_benchmark, 'save_figure', save_figure)
    plot_budget.main([str(path), '--out', str(tmp_path / 'a.png'), '--sets', 'Kodak24,Set5'])
    assert labels == ['distillation steps per image T'] * 2
    labels.clear()
    plot_budget.main([
        str(path), '--out',
        str(tmp_path / 'b.png'), '--sets', 'Kodak24', '--series', 'GSDD=alg1_t150@100', '--xlabel',
        'GSDD iterations per pseudo-class'
    ])
    assert labels == ['GSDD iterations per pseudo-class']

"""``scripts/plot_benchmark.py``: means and stds from the runner's CSV (hand-computed), line specs, the PNG."""
import importlib.util
import os.path as osp
import pytest
from conftest import REPO

_spec = importlib.util.spec_from_file_location('plot_benchmark', osp.join(REPO, 'scripts', 'plot_benchmark.py'))
plot_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_benchmark)

CSV = """arch,method,label,size,pairs,seed,Set5/psnr,Set14/psnr
EDSR,full,r1,1.0,100,0,30.0,27.0
EDSR,full,r1,1.0,100,1,30.2,27.0
EDSR,random,r0.1,0.1,10,0,29.0,26.0
EDSR,random,r0.1,0.1,10,1,29.5,26.5
EDSR,random,r0.1,0.1,10,2,29.3,
EDSR,random_big,r0.3,0.3,30,0,29.8,26.8
EDSR,bicubic,,,,,28.0,25.0
"""


def test_read_results_gives_the_mean_and_sample_std_per_method(tmp_path):
    path = tmp_path / 'results.csv'
    path.write_text(CSV)
    res = plot_benchmark.read_results(str(path), 'Set5')
    pairs, mean, std, n = res['random']
    assert (pairs, n) == (10, 3) and mean == pytest.approx(29.266667, abs=1e-6)
    assert std == pytest.approx(0.251661, abs=1e-6)  # sqrt(((-.2667)^2 + .2333^2 + .0333^2) / 2)
    assert res['full'][:2] == (100, pytest.approx(30.1)) and res['random_big'][2:] == (0.0, 1)
    assert res['bicubic'][0] == 0
    assert plot_benchmark.read_results(str(path), 'Set14')['random'][3] == 2  # the empty cell is skipped
    with pytest.raises(KeyError, match="has no column 'Kodak24/psnr'"):
        plot_benchmark.read_results(str(path), 'Kodak24')


def test_line_specs_and_the_figure(tmp_path):
    assert plot_benchmark.parse_lines(None) == plot_benchmark.DEFAULT_LINES
    assert plot_benchmark.parse_lines(['random=random, random_big']) == {'random': ['random', 'random_big']}
    with pytest.raises(ValueError, match="--line 'random': expected 'label=method_a,method_b'"):
        plot_benchmark.parse_lines(['random'])
    path = tmp_path / 'results.csv'
    path.write_text(CSV)
    out = tmp_path / 'fig' / 'psnr.png'
    plot_benchmark.main([str(path), '--out', str(out), '--line', 'random=random,random_big'])
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_rows_of_two_students_are_never_averaged(tmp_path):
    path = tmp_path / 'results.csv'
    path.write_text(CSV + 'RCAN,random,r0.1,0.1,10,0,31.0,28.0\n-,bicubic_rgb,,,,,27.0,24.0\n')
    with pytest.raises(ValueError, match=r"holds the archs \['EDSR', 'RCAN'\]: name one with --arch"):
        plot_benchmark.read_results(str(path), 'Set5')
    with pytest.raises(ValueError, match="has no rows of arch 'SwinIR'"):
        plot_benchmark.read_results(str(path), 'Set5', arch='SwinIR')
    rcan = plot_benchmark.read_results(str(path), 'Set5', arch='RCAN')
    assert rcan['random'] == (10, 31.0, 0.0, 1) and 'bicubic' not in rcan  # EDSR's row
    assert rcan['bicubic_rgb'][1] == 27.0  # a row without an arch ('-', as the runner writes bicubic) is kept
    edsr = plot_benchmark.read_results(str(path), 'Set5', arch='EDSR')
    assert edsr['random'][1] == pytest.approx(29.266667, abs=1e-6) and edsr['random'][3] == 3

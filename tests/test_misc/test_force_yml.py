"""``--force_yml key=value`` values are read as YAML scalars (compat fix 5), so a value given on the command line
gets the same checks, and the same errors, as the same value in the option file."""
import contextlib
import numpy as np
import os.path as osp
import pytest
import random
import subprocess
import sys
import torch

import basicsr_distill  # noqa: F401  (compat fixes before basicsr / torchvision)

# isort: split
from conftest import REPO, bare_idc_opt, build_distill_model, copy_images, write_option_file

from basicsr.utils import options as basicsr_options
from basicsr_distill import compat
from basicsr_distill.models.idc_model import IDCModel


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


@contextlib.contextmanager
def _kept_rng():
    """parse_options seeds the global RNGs (BasicSR's set_random_seed): give the other tests theirs back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)


def _idc_opt(tmp_path, **distill):
    """conftest's bare IDC options on the real 78x78 T91 t20, with the keys the force_yml tests overwrite."""
    opt = bare_idc_opt(tmp_path, copy_images(tmp_path / 'hr', ['t20.png']), **distill)
    opt['name'] = 'idc_force_yml'
    opt['train'] = {'total_iter': 20, 'lr': 0.5}
    opt.update(a={'b': 'x'}, c={'d': False, 'e': 0})
    return opt


def _parse_options(monkeypatch, opt_path, root, *force):
    """BasicSR's own parse_options on ``opt_path`` with ``--force_yml *force`` (none when empty)."""
    argv = ['basicsr/train.py', '-opt', str(opt_path)] + (['--force_yml', *force] if force else [])
    monkeypatch.setattr(sys, 'argv', argv)
    with _kept_rng():
        opt, _ = basicsr_options.parse_options(str(root), is_train=True)
    return opt


def test_the_fix_is_applied_and_idempotent():
    assert basicsr_options._postprocess_yml_value is compat.force_yml_value
    assert compat.fix_force_yml_values() is True and basicsr_options._postprocess_yml_value is compat.force_yml_value


@pytest.mark.parametrize('text, expected', [
    ('-0.1', -0.1),
    ('1e-3', 1e-3),
    ('-1e-3', -1e-3),
    ('1.0e-3', 1e-3),
    ('!!float 1e-3', 1e-3),
    ('+2', 2),
    ('0.5', 0.5),
    ('.5', 0.5),
    ('7', 7),
    ('-3', -3),
    ('010', 10),
    ('1_000', 1000),
    ('~', None),
    ('null', None),
    ('None', None),
    ('NONE', None),
    ('true', True),
    ('False', False),
    ('TRUE', True),
    ('[1, 2]', [1, 2]),
    ('[-0.5, 1e-3]', [-0.5, 1e-3]),
    ('[a, b]', ['a', 'b']),
    ('{a: 1}', {
        'a': 1
    }),
    ('abc', 'abc'),
    ('EDSR', 'EDSR'),
    ('a#b', 'a#b'),
    ('#x', '#x'),
    ('', ''),
    ('2024-01-01', '2024-01-01'),
    ('inf', 'inf'),
    ('nan', 'nan'),
    ('{bad', '{bad'),
    ('"1e-3"', '1e-3'),
    ("'7'", '7'),
    ('!!python/name:os.system', '!!python/name:os.system'),
])
def test_force_yml_value_reads_yaml_scalars(text, expected):
    value = compat.force_yml_value(text)
    assert value == expected and type(value) is type(expected)


def test_parse_options_force_yml_gives_numbers_none_and_bools(tmp_path, monkeypatch):
    opt_path = write_option_file(_idc_opt(tmp_path), tmp_path / 'idc.yml')
    opt = _parse_options(monkeypatch, opt_path, tmp_path, 'distill:ratio=-0.1', 'train:lr=1e-3', 'a:b=~', 'c:d=true',
                         'c:e=2.5e-1', 'name=run_1e-3')
    assert opt['distill']['ratio'] == -0.1 and type(opt['distill']['ratio']) is float
    assert opt['train']['lr'] == 1e-3 and type(opt['train']['lr']) is float
    assert opt['a']['b'] is None and opt['c']['d'] is True
    assert opt['c']['e'] == 0.25 and opt['name'] == 'run_1e-3'


def test_force_yml_out_of_range_ratio_gets_the_range_error_as_from_the_file(tmp_path, monkeypatch):
    match = r'distill.ratio \(r\) must be in \(0, 1\], got -0.1$'
    opt_path = write_option_file(_idc_opt(tmp_path), tmp_path / 'idc.yml')
    with pytest.raises(ValueError, match=match):
        build_distill_model(IDCModel, _parse_options(monkeypatch, opt_path, tmp_path, 'distill:ratio=-0.1'))
    in_file = write_option_file(_idc_opt(tmp_path, ratio=-0.1), tmp_path / 'idc_in_file.yml')
    with pytest.raises(ValueError, match=match):
        build_distill_model(IDCModel, _parse_options(monkeypatch, in_file, tmp_path))

    opt = _parse_options(monkeypatch, opt_path, tmp_path, 'distill:ratio=2e-1')  # no dot: a string for PyYAML
    assert build_distill_model(IDCModel, opt).cfg['ratio'] == 0.2


def test_the_plugin_tag_applies_the_fix_before_force_yml_in_a_fresh_interpreter(tmp_path):
    """``python basicsr/train.py``: BasicSR is imported first, the option file's ``plugin:`` tag imports this package
    while parse_options loads the file, and --force_yml is applied after that."""
    opt_path = write_option_file(_idc_opt(tmp_path), tmp_path / 'idc.yml')
    code = f'''
import importlib.util, sys
# torchvision needs compat fixes 1 and 2 in this environment: apply only those, from the file, without the package
spec = importlib.util.spec_from_file_location('compat_only', {osp.join(REPO, 'basicsr_distill', 'compat.py')!r})
compat_only = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compat_only)
compat_only.fix_torchvision_ops()
compat_only.fix_functional_tensor()
from basicsr.utils import options
assert 'basicsr_distill' not in sys.modules and options._postprocess_yml_value('-0.1') == '-0.1'
sys.argv = ['basicsr/train.py', '-opt', {opt_path!r}, '--force_yml', 'distill:ratio=-0.1', 'train:lr=1e-3']
opt, _ = options.parse_options({str(tmp_path)!r}, is_train=True)
print('basicsr_distill' in sys.modules, repr(opt['distill']['ratio']), repr(opt['train']['lr']))
'''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-3:] == ['True', '-0.1', '0.001']

"""utils.options: reading option files (real ones, named errors), building a model outside the train loop (options
prepared as BasicSR's parse_options does, a real IDCModel through MODEL_REGISTRY), the checked merge of a section."""
import copy
import os.path as osp
import pytest
import shutil
import sys
import torch
from collections import OrderedDict
from conftest import REPO, data_path, write_option_file

from basicsr_distill.models.idc_model import IDCModel
from basicsr_distill.utils.options import (apply_forced_seed, build_model_from_options, check_experiment_name,
                                           check_option_type, forced_seed, merge_options, read_option_file)


class Recorder:
    """A stand-in model class: keeps the options it was built with."""

    def __init__(self, opt):
        self.opt = opt


def test_read_option_file_reads_real_files_with_basicsr_loader():
    opt = read_option_file(osp.join(REPO, 'options', 'distill', 'idc_demo.yml'))
    assert isinstance(opt, OrderedDict)  # BasicSR's ordered loader
    assert opt['plugin'] == 'basicsr_distill'  # the !!python/name tag ran
    assert opt['model_type'] == 'IDCModel' and opt['network_t']['type'] == 'IMDN'
    train = read_option_file(osp.join(REPO, 'options', 'train', 'EDSR', 'train_EDSR_x4_distilled_demo.yml'))
    assert train['train']['optim_g']['lr'] == 1e-3  # !!float 1e-3


def test_read_option_file_names_the_file(tmp_path):
    missing = tmp_path / 'missing.yml'
    with pytest.raises(FileNotFoundError, match=f'Option file not found: "{missing}"'):
        read_option_file(str(missing))
    listed = tmp_path / 'list.yml'
    listed.write_text('- a\n- b\n')
    with pytest.raises(ValueError, match=f'Option file "{listed}" does not hold a mapping of options \\(got list\\)'):
        read_option_file(listed)  # a Path is accepted too
    empty = tmp_path / 'empty.yml'
    empty.write_text('')
    with pytest.raises(ValueError, match='empty.yml" does not hold a mapping of options \\(got NoneType\\)'):
        read_option_file(str(empty))


def test_build_model_from_options_prepares_as_parse_options(tmp_path):
    opt = {
        'model_type': 'X',
        'scale': 3,
        'num_gpu': 'auto',
        'path': {
            'distilled_root': 'kept',
            'other': 1
        },
        'datasets': {
            'train': {
                'name': 'a'
            },
            'val_1': {
                'name': 'b'
            }
        }
    }
    given = copy.deepcopy(opt)
    root = tmp_path / 'exp'
    model = build_model_from_options(opt, root=str(root), model_cls=Recorder)
    got = model.opt
    assert opt == given  # the caller's options are not modified
    assert (got['is_train'], got['dist'], got['rank'], got['world_size']) == (True, False, 0, 1)
    assert got['num_gpu'] == torch.cuda.device_count()  # auto resolved
    assert got['datasets'] == {
        'train': {
            'name': 'a',
            'phase': 'train',
            'scale': 3
        },
        'val_1': {
            'name': 'b',
            'phase': 'val',
            'scale': 3
        }
    }
    assert got['path'] == {
        'distilled_root': 'kept',
        'other': 1,
        'experiments_root': str(root),
        'training_states': str(root)
    }
    assert root.is_dir()

    got = build_model_from_options(opt, distilled_root='out', num_gpu=0, model_cls=Recorder).opt
    assert got['num_gpu'] == 0 and got['path'] == {'distilled_root': 'out', 'other': 1}  # root None: paths kept
    with pytest.raises(KeyError):
        build_model_from_options(opt)  # 'X' is no registered model


def test_build_model_from_options_builds_a_real_distillation_model(tmp_path):
    hr = tmp_path / 'hr'
    hr.mkdir()
    shutil.copy(data_path('data', 'train', 't91', 'tt27.png'), hr / 'tt27.png')
    opt = {
        'name': 'idc_options_test',
        'model_type': 'IDCModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': {
                'name': 'one',
                'type': 'SRInstanceDataset',
                'dataroot_gt': str(hr),
                'gt_size': 32,
                'stride': 16
            }
        },
        'network_t': {
            'type': 'IMDN',
            'block_type': 'imdb_ntire22',
            'upscale': 4
        },
        'path': {
            'pretrain_network_t': osp.join(REPO, 'weights', 'imdn_baseline.pth'),
            'resume_state': None
        },
        'distill': {
            'iters_per_instance': 4,
            'warmup_iters': 1,
            'assign_iters': 2,
            'assign_steps': 1,
            'num_groups': 2,
            'rlff': {
                'kernel_size': 3,
                'num_channels': 8,
                'patch_size': 4
            },
            'ncfd': {
                'num_freqs': 16,
                'alpha': 0.5,
                'bank_size': 64
            }
        },
        'train': {
            'total_iter': 4,
            'warmup_iter': -1
        },
        'logger': {
            'print_freq': 1,
            'save_checkpoint_freq': 1000,
            'use_tb_logger': False
        },
    }
    path = write_option_file(opt, tmp_path / 'idc.yml')
    model = build_model_from_options(path, root=str(tmp_path / 'exp'), distilled_root=str(tmp_path / 'set'))
    assert type(model) is IDCModel  # MODEL_REGISTRY[model_type], from the file
    assert model.opt['path']['training_states'] == str(tmp_path / 'exp')
    assert model.opt['datasets']['train']['scale'] == 4 and model.unit_names == ['tt27']
    assert model.cfg['iters_per_instance'] == 4 and model.cfg['ratio'] == 0.1  # merged with the defaults


def test_merge_options_checks_keys_and_types():
    defaults = {
        'ratio': 0.1,
        'iters': 10,
        'on': True,
        'mode': 'a',
        'any': None,
        'sub': {
            'lr': 0.01,
            'n': 2
        },
        'free': {}
    }
    cfg = merge_options(defaults, {'ratio': 1, 'iters': 4.0, 'sub': {'n': 3}, 'any': [1], 'free': {'x': 1}})
    assert cfg == {
        'ratio': 1.0,
        'iters': 4,
        'on': True,
        'mode': 'a',
        'any': [1],
        'sub': {
            'lr': 0.01,
            'n': 3
        },
        'free': {
            'x': 1
        }
    }
    assert type(cfg['ratio']) is float and type(cfg['iters']) is int
    assert defaults['sub'] == {'lr': 0.01, 'n': 2}  # not modified
    assert merge_options(defaults, None) == defaults
    with pytest.raises(ValueError, match=r"unknown option distill.sub.m; known: \['lr', 'n'\]"):
        merge_options(defaults, {'sub': {'m': 1}})
    with pytest.raises(ValueError, match='option distill must be a mapping of options, got 5 \\(int\\)'):
        merge_options(defaults, 5)
    with pytest.raises(
            ValueError,
            match="option distill.on must be a bool \\(true / false\\) like its default True, "
            "got 1 \\(int\\)"):
        merge_options(defaults, {'on': 1})
    with pytest.raises(ValueError, match='option distill.iters must be an int like its default 10, got 2.5'):
        merge_options(defaults, {'iters': 2.5})
    with pytest.raises(ValueError, match=r'got .1e-3. \(str\) \(PyYAML reads 1e-3 as a string'):
        merge_options(defaults, {'sub': {'lr': '1e-3'}})


def test_check_option_type_nullable_strings():
    assert check_option_type('auto', None, 'distill.dit.subfolder') is None  # a diffusers folder without subfolder
    with pytest.raises(ValueError, match='option distill.mode must be a string'):
        check_option_type('auto', None, 'distill.mode')


def test_forced_seed_reads_the_last_manual_seed_entry():
    assert forced_seed(None) is None and forced_seed(['name=x', 'train:total_iter=10']) is None
    assert forced_seed(['name=x', 'manual_seed=3']) == 3
    assert forced_seed(['manual_seed=3', ' manual_seed = 11 ']) == 11


def test_a_manual_seed_forced_on_the_command_line_seeds_the_run(tmp_path, monkeypatch):
    """BasicSR 1.4.2 seeds before applying --force_yml; apply_forced_seed (called by train.py) seeds with the value."""
    from basicsr.utils.options import parse_options
    opt_file = tmp_path / 'seed.yml'
    opt_file.write_text('name: seed_check\nmodel_type: SRModel\nscale: 4\nnum_gpu: 0\nmanual_seed: 0\n'
                        'datasets: {}\npath: {}\n')
    monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', str(opt_file), '--force_yml', 'manual_seed=7'])
    opt, args = parse_options(str(tmp_path), is_train=False)
    assert opt['manual_seed'] == 7
    drawn = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.rand(4))  # what BasicSR alone gives: the file's seed 0, not 7
    opt, args = parse_options(str(tmp_path), is_train=False)
    assert apply_forced_seed(opt, args.force_yml) == 7
    drawn = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(drawn, torch.rand(4))


def test_apply_forced_seed_leaves_the_rng_alone_without_a_forced_seed():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    assert apply_forced_seed({'manual_seed': 9, 'rank': 0}, ['name=x']) is None
    assert apply_forced_seed({'manual_seed': 9, 'rank': 0}, None) is None
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize('name', ['idc_div2k', 'debug_idc', 'IDC x4 (r=0.1)', 'a..b', '.hidden', 'é'])
def test_check_experiment_name_accepts_one_plain_folder_name(name):
    assert check_experiment_name(name) == name


@pytest.mark.parametrize('name, problem', [
    ('..', 'names the current or the parent folder'),
    ('.', 'names the current or the parent folder'),
    ('experiments/x', 'holds a path separator'),
    ('/home/me', 'holds a path separator'),
    ('', 'is empty'),
    ('  ', 'is empty'),
    (' idc', 'starts or ends with white space'),
    ('a\nb', 'holds a control character'),
    (None, 'is of type NoneType, not a string'),
    (3, 'is of type int, not a string'),
])
def test_check_experiment_name_refuses_anything_else_naming_the_option(name, problem):
    with pytest.raises(ValueError) as err:
        check_experiment_name(name)
    assert str(err.value).startswith(f'option name={name!r} {problem}: the experiment name must be one plain folder')
    assert str(err.value).endswith('Nothing was created or moved.')

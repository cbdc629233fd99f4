"""utils.options: reading option files (real ones, named errors), building a model outside the train loop (options
prepared as BasicSR's parse_options does, a real IDCModel through MODEL_REGISTRY), the checked merge of a section."""
import copy
import os
import os.path as osp
import pytest
import shutil
import sys
import torch
from collections import OrderedDict
from conftest import REPO, copy_images, data_path, write_option_file

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


def _idc_options(tmp_path):
    """Tiny IDC options on one bundled T91 image (tt27), output under tmp_path/set."""
    hr = tmp_path / 'hr'
    copy_images(hr, ['tt27.png'])
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
            'distilled_root': str(tmp_path / 'set'),
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
    return opt


def test_build_model_from_options_builds_a_real_distillation_model(tmp_path):
    opt = _idc_options(tmp_path)
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


# ------------------------------------------------------------------ ranges, optimisers and keys outside distill
def test_check_ranges_names_the_first_option_out_of_range():
    from basicsr_distill.utils.options import check_ranges
    section = {'warmup_iters': -6, 'sub': {'alpha': 1.0, 'p': 0.5}, 'lr': float('nan')}
    check_ranges(section, {'sub.alpha': '[0, 1]', 'sub.p': '(0, 1)'})
    with pytest.raises(ValueError, match=r'^option distill.warmup_iters must be >= 0, got -6$'):
        check_ranges(section, {'sub.alpha': '[0, 1]', 'warmup_iters': '>= 0'})
    with pytest.raises(ValueError, match=r'^option distill.sub.alpha must be in \[0, 1\), got 1.0$'):
        check_ranges(section, {'sub.alpha': '[0, 1)'})
    with pytest.raises(ValueError, match=r'^option x.lr must be > 0, got nan$'):
        check_ranges(section, {'lr': '> 0'}, prefix='x')


@pytest.mark.parametrize('section, match', [
    ({
        'type': 'Adam',
        'lr': -0.01
    }, r'distill.optim.lr must be >= 0, got -0.01'),
    ({
        'type': 'Adam',
        'lr': 0.01,
        'betas': [0.9]
    }, r'distill.optim.betas must be a pair \[beta1, beta2\]'),
    ({
        'type': 'Adam',
        'lr': 0.01,
        'betas': [0.9, 1.0]
    }, r'distill.optim.betas must be a pair'),
    ({
        'type': 'Adam',
        'lr': 0.01,
        'betas': [True, 0.9]
    }, r'distill.optim.betas must be a pair'),
    ({
        'type': 'SGD',
        'lr': 0.01,
        'momentum': -1
    }, r'distill.optim.momentum must be >= 0'),
    ({
        'type': 'Adam',
        'lr': 0.01,
        'eps': 0
    }, r'distill.optim.eps must be > 0'),
    ({
        'type': 'Optimizer',
        'lr': 0.01
    }, r'distill.optim is refused by torch.optim.Optimizer'),
    ({
        'type': 'Adam',
        'lr': 0.01,
        'amsgrad': 'yes',
        'foo': 1
    }, r'distill.optim is refused by torch.optim.Adam: .*foo'),
    ({
        'type': 'nn',
        'lr': 0.01
    }, r"distill.optim.type must name a torch.optim optimiser \(e.g. Adam\), got 'nn'"),
])
def test_check_optimizer_refuses_nonsense_naming_the_option(section, match):
    from basicsr_distill.utils.options import check_optimizer
    with pytest.raises(ValueError, match=match):
        check_optimizer(section, 'distill.optim')


def test_check_optimizer_accepts_sensible_options():
    from basicsr_distill.utils.options import check_optimizer
    check_optimizer({'type': 'Adam', 'lr': 0.01, 'betas': [0.9, 0.999]}, 'distill.optim')
    check_optimizer({'type': 'SGD', 'lr': 1, 'momentum': 0.9, 'weight_decay': 0}, 'distill.optim')
    check_optimizer({'lr': 1.0e-3, 'weight_decay': 0.0, 'type': 'AdamW'}, 'distill.finetune')
    check_optimizer({'type': 'Adam', 'lr': 0}, 'distill.optim')  # the benchmark's gsdd_init control: z stays


@pytest.mark.parametrize('change, match', [
    ({
        'warmup_iters': -6
    }, r'option distill.warmup_iters must be >= 0, got -6'),
    ({
        'iters_per_instance': -2
    }, r'option distill.iters_per_instance must be >= 1, got -2'),
    ({
        'assign_iters': -1
    }, r'option distill.assign_iters must be >= 0, got -1'),
    ({
        'real_batch_size': 0
    }, r'option distill.real_batch_size must be >= 1, got 0'),
    ({
        'ncfd': {
            'alpha': 1.5
        }
    }, r'option distill.ncfd.alpha must be in \[0, 1\], got 1.5'),
    ({
        'weights': {
            'pair': -0.1
        }
    }, r'option distill.weights.pair must be >= 0, got -0.1'),
])
def test_idc_counts_out_of_range_are_refused_when_the_model_is_built(tmp_path, change, match):
    """A negative warmup_iters used to shift the schedule (exit 0); a negative iters_per_instance was reported as a
    too small train.total_iter sum."""
    opt = _idc_options(tmp_path)
    for key, value in change.items():
        opt['distill'][key] = dict(opt['distill'].get(key) or {}, **value) if isinstance(value, dict) else value
    with pytest.raises(ValueError, match=match):
        build_model_from_options(opt, root=str(tmp_path / 'exp'))
    assert not osp.exists(opt['path']['distilled_root'])


@pytest.mark.parametrize('kind, key, match', [
    ('idc', 'meta_info_fle', r"unknown option datasets.train.meta_info_fle of SRInstanceDataset \(dataset 'demo'\) "
     r'\(did you mean meta_info_file\?\)'),
    ('idc', 'dataroot_gtt', r'unknown option datasets.train.dataroot_gtt of SRInstanceDataset .*did you mean '
     r'dataroot_gt\?'),
    ('gsdd', 'class', r'unknown option datasets.train.class of SRClassFolderDataset .*did you mean classes\?'),
    ('stage', 'lenght', r'unknown option datasets.train.lenght of DistillStageDataset .*did you mean length\?'),
    ('paired', 'dataroot_gt', r'unknown option datasets.train.dataroot_gt of DistilledPairedDataset .*did you mean '
     r'dataroot\?'),
    ('paired', 'use_flip', r'unknown option datasets.train.use_flip of DistilledPairedDataset .*did you mean '
     r'use_hflip\?'),
])
def test_unknown_dataset_keys_of_this_package_are_refused(tmp_path, kind, key, match):
    """BasicSR ignores a misspelt key of a dataset section silently: this package's datasets refuse them."""
    from basicsr.data import build_dataset
    folder = str(tmp_path / 'hr')
    shutil.copytree(data_path('data', 'train', 't91'), folder)
    dataset = {
        'idc': {
            'type': 'SRInstanceDataset',
            'dataroot_gt': folder,
            'gt_size': 32
        },
        'gsdd': {
            'type': 'SRClassFolderDataset',
            'dataroot_gt': folder,
            'gt_size': 32
        },
        'stage': {
            'type': 'DistillStageDataset',
            'dataroot_gt': folder,
            'length': 3
        },
        'paired': {
            'type': 'DistilledPairedDataset',
            'dataroot': folder
        },
    }[kind]
    dataset.update({
        'name': 'demo',
        'phase': 'train',
        'scale': 4,
        'io_backend': {
            'type': 'disk'
        },
        'use_shuffle': True,
        'num_worker_per_gpu': 0,
        'batch_size_per_gpu': 2,
        'dataset_enlarge_ratio': 1,
        'prefetch_mode': None,
        key: 'x'
    })
    with pytest.raises(ValueError, match=match):
        build_dataset(dataset)


@pytest.mark.parametrize('key, match', [
    ('pretrain_network_tt', r'unknown option path.pretrain_network_tt: there is no network_tt section for it \(did '
     r"you mean pretrain_network_t\?\); the networks are \['t'\]"),
    ('strict_load_g', r'unknown option path.strict_load_g: there is no network_g section'),
    ('param_key_up', r'unknown option path.param_key_up: there is no network_up section'),
    ('distiled_root', r'unknown option path.distiled_root \(did you mean distilled_root\?\)'),
    ('resume_sate', r'unknown option path.resume_sate \(did you mean resume_state\?\)'),
    ('pretrained_network_t', r'unknown option path.pretrained_network_t \(did you mean pretrain_network_t\?\)'),
])
def test_path_keys_that_look_like_basicsr_keys_but_are_unknown_are_refused(tmp_path, key, match):
    from basicsr_distill.utils.options import check_path_keys
    opt = _idc_options(tmp_path)
    opt['path'][key] = 'x'
    with pytest.raises(ValueError, match=match):
        check_path_keys(opt)
    with pytest.raises(ValueError, match=match):  # a distillation model checks them when it is built
        build_model_from_options(opt, root=str(tmp_path / 'exp'))
    assert not osp.exists(opt['path']['distilled_root'])


def test_basicsr_standard_path_keys_are_accepted():
    from basicsr.utils.options import parse_options  # noqa: F401  (the keys below are the ones it sets)
    from basicsr_distill.utils.options import check_path_keys
    opt = {
        'network_g': {},
        'network_d': {},
        'path': {
            k: 'x'
            for k in ('experiments_root', 'models', 'training_states', 'log', 'visualization', 'results_root',
                      'resume_state', 'root', 'ignore_resume_networks', 'distilled_root', 'pretrain_network_g',
                      'strict_load_g', 'param_key_g', 'pretrain_network_d', 'strict_load_d', 'param_key_d',
                      'my_own_folder')
        }
    }
    check_path_keys(opt)


def test_a_misspelt_path_key_of_any_model_stops_train_py_before_anything_is_created(tmp_path, monkeypatch):
    """Through basicsr_distill/train.py, for BasicSR's own SRModel too (downstream training)."""
    from conftest import tiny_edsr_options

    from basicsr_distill.utils import run_lock
    opt = tiny_edsr_options('edsr_typo', {'type': 'DistilledPairedDataset', 'dataroot': str(tmp_path / 'set')})
    opt['path']['pretrain_network_gg'] = 'weights/x.pth'
    cwd = tmp_path / 'run'
    cwd.mkdir()
    path = write_option_file(opt, cwd / 'edsr.yml')
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, 'argv', ['basicsr_distill/train.py', '-opt', path])
    with pytest.raises(ValueError, match=r'unknown option path.pretrain_network_gg: there is no network_gg section'):
        run_lock.guarded_train_pipeline(str(cwd))
    assert sorted(os.listdir(cwd)) == ['edsr.yml']

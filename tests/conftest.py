"""Shared test fixtures: paths of the real data and weights.

Two sources of real files:

- ``DATA``: what the repository bundles (``datasets/demo/``, ``tests/data/``, ``weights/``), laid out once per test
  session in a temporary folder in the layout of the project's shared folder (``data/train/t91``,
  ``data/train/bsd200``, ``data/val/Set5``, ``data/val/Set14``, ``weights``, plus ``weights/ncnn`` from
  ``tests/data/ncnn``). Every test reads it through
  :func:`data_path`, so the suite runs the same on a fresh clone and in CI.
- ``SHARED``: the project's read-only ``shared/`` folder (beside the repository, as in CI, unless
  ``BASICSR_DISTILL_SHARED`` names another place), for the few tests marked ``needs_shared`` that need files the
  repository does not bundle; they read it through :func:`shared_path`. Without it they are skipped, naming the
  missing file, unless ``BASICSR_DISTILL_REQUIRE_SHARED=1`` (CI), where a missing file fails the test.

The tests' one set of helpers follows: real image folders (:func:`copy_images`, :func:`idc_images`,
:func:`gsdd_classes`), tiny option dicts of the three methods (:func:`tiny_run_options` and the ``tiny_*`` builders,
with the model tests' :func:`idc_distill_opt`, :func:`gsdd_opt`, :func:`minimax_opt`), training in this process
(:func:`run_basicsr_train`, :func:`train_in_process`) or as a subprocess (:data:`OPTIONS`, :func:`start_run`,
:func:`finish`, ...), and comparisons of what runs wrote (:func:`listing`, :func:`assert_same_set`).
"""
import atexit
import contextlib
import os
import os.path as osp
import pytest
import shutil
import tempfile

import basicsr_distill  # noqa: F401  (compat fixes before anything imports torchvision)

# isort: split

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
SHARED = os.environ.get('BASICSR_DISTILL_SHARED', osp.abspath(osp.join(REPO, '..', 'shared')))
REQUIRE_SHARED = os.environ.get('BASICSR_DISTILL_REQUIRE_SHARED', '') not in ('', '0')
BUNDLED = osp.join(REPO, 'datasets', 'demo')
TEST_DATA = osp.join(REPO, 'tests', 'data')


def _lay_out_bundled_data():
    """Copy the bundled real files into a temporary folder in the shared folder's layout; returns its path.

    T91 names (``t*.png`` / ``tt*.png``) and BSD200 names (digits) of ``datasets/demo/train_hr`` go to
    ``data/train/t91`` / ``data/train/bsd200``, with ``tests/data/t91``; Set5 from ``datasets/demo/Set5``; Set14 from
    ``tests/data/Set14``; ``weights/*.pth``; ``tests/data/ncnn`` to ``weights/ncnn``. Files are copied (not linked)
    so a test may modify its inputs freely.
    """
    root = tempfile.mkdtemp(prefix='basicsr_distill_testdata_')
    atexit.register(shutil.rmtree, root, True)
    places = {'t91': osp.join(root, 'data', 'train', 't91'), 'bsd200': osp.join(root, 'data', 'train', 'bsd200')}
    for folder in places.values():
        os.makedirs(folder)
    train = osp.join(BUNDLED, 'train_hr')
    for name in sorted(os.listdir(train)):
        shutil.copy(osp.join(train, name), places['bsd200' if name[0].isdigit() else 't91'])
    for name in sorted(os.listdir(osp.join(TEST_DATA, 't91'))):
        shutil.copy(osp.join(TEST_DATA, 't91', name), places['t91'])
    shutil.copytree(osp.join(BUNDLED, 'Set5'), osp.join(root, 'data', 'val', 'Set5'))
    shutil.copytree(osp.join(TEST_DATA, 'Set14'), osp.join(root, 'data', 'val', 'Set14'))
    os.makedirs(osp.join(root, 'weights'))
    for name in sorted(os.listdir(osp.join(REPO, 'weights'))):
        if name.endswith('.pth'):
            shutil.copy(osp.join(REPO, 'weights', name), osp.join(root, 'weights'))
    shutil.copytree(osp.join(TEST_DATA, 'ncnn'), osp.join(root, 'weights', 'ncnn'))
    return root


DATA = _lay_out_bundled_data()


def data_path(*parts):
    """Path of a bundled real file or folder, named as in the shared folder (``data_path('data', 'train', 't91',
    't1.png')``); fails when the repository does not bundle it (add it to ``tests/data`` or use
    :func:`shared_path` in a test marked ``needs_shared``)."""
    path = osp.join(DATA, *parts)
    if not osp.exists(path):
        pytest.fail(f'{osp.join(*parts)} is not bundled with the repository (datasets/demo, tests/data, weights): '
                    f'add it to tests/data, or read it with shared_path() in a test marked needs_shared')
    return path


def shared_path(*parts):
    """Path under the project's shared folder, for tests marked ``needs_shared`` only.

    Skips the test naming the missing file when the shared folder is not there (a user's machine), fails when
    ``BASICSR_DISTILL_REQUIRE_SHARED`` is set (CI always has it).
    """
    path = osp.join(SHARED, *parts)
    if not osp.exists(path):
        message = (f'needs {path} (the project\'s shared data, not bundled): put shared/ beside the repository or set '
                   f'BASICSR_DISTILL_SHARED')
        if REQUIRE_SHARED:
            pytest.fail(message)
        pytest.skip(message)
    return path


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'needs_shared(*paths): needs these files of the project\'s shared folder (relative to it), which '
        'the repository does not bundle (skipped without them, run in CI)')


def pytest_runtest_setup(item):
    marker = item.get_closest_marker('needs_shared')
    if marker is None:
        return
    missing = [p for p in marker.args if not osp.exists(osp.join(SHARED, p))
               ] or ([] if osp.isdir(SHARED) else ['(the folder itself)'])
    if missing:
        message = (f'needs {", ".join(missing)} of the project\'s shared folder {SHARED} (not bundled with the '
                   f'repository): put shared/ beside the repository or set BASICSR_DISTILL_SHARED')
        if REQUIRE_SHARED:
            pytest.fail(message)
        pytest.skip(message)


@contextlib.contextmanager
def basicsr_log(level=None):
    """Collect what BasicSR's ``basicsr`` logger writes (it does not propagate to pytest's caplog) in a StringIO.

    Args:
        level (int | None): Logger level while collecting (e.g. ``logging.INFO``); None keeps the current one.
    """
    import io
    import logging
    stream, logger = io.StringIO(), logging.getLogger('basicsr')
    handler, old_level = logging.StreamHandler(stream), logger.level
    logger.addHandler(handler)
    if level is not None:
        logger.setLevel(level)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@contextlib.contextmanager
def limited_threads(most):
    """At most ``most`` torch threads inside the block (tiny networks on shared cores); restored afterwards."""
    import torch
    num = torch.get_num_threads()
    torch.set_num_threads(min(num, most))
    try:
        yield
    finally:
        torch.set_num_threads(num)


@pytest.fixture
def one_thread():
    """Tiny networks: one thread avoids oversubscribing the shared cores (restored afterwards)."""
    with limited_threads(1):
        yield


class NearestUp(__import__('torch').nn.Module):
    """x``scale`` nearest-neighbour up-sampling: a stand-in SR network for evaluation tests."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return __import__('torch').nn.functional.interpolate(x, scale_factor=self.scale, mode='nearest')


def write_option_file(opt, path):
    """Write ``opt`` as a BasicSR option file carrying the plugin key; returns the path as str."""
    import yaml
    path.write_text('plugin: !!python/name:basicsr_distill.__name__\n' + yaml.safe_dump(opt, sort_keys=False))
    return str(path)


def run_basicsr_train(opt_path, root, monkeypatch, *extra):
    """BasicSR's own ``train_pipeline`` on an option file, experiments under ``root``."""
    import sys

    from basicsr.train import train_pipeline
    monkeypatch.setattr(sys, 'argv', ['basicsr/train.py', '-opt', str(opt_path), *extra])
    train_pipeline(str(root))


def build_distill_model(model_cls, opt):
    """A distillation model built as train_pipeline builds it, for unit-level checks without the loop (the package's
    one builder, ``utils.options.build_model_from_options``); only ``datasets.train`` is kept, and what the model
    writes besides the distilled set goes to ``<distilled_root>_exp``."""
    from basicsr_distill.utils.options import build_model_from_options
    opt = dict(opt, datasets={'train': opt['datasets']['train']})
    return build_model_from_options(opt, root=opt['path']['distilled_root'] + '_exp', model_cls=model_cls)


def tiny_edsr_options(name, dataset, gt_size=16, iters=2):
    """A tiny EDSR x4 SRModel config training ``iters`` iterations on ``dataset`` (a datasets.train dict)."""
    train = dict(
        dataset,
        name='distilled',
        io_backend={'type': 'disk'},
        gt_size=gt_size,
        use_hflip=True,
        use_rot=True,
        use_shuffle=True,
        num_worker_per_gpu=0,
        batch_size_per_gpu=2,
        dataset_enlarge_ratio=1,
        prefetch_mode=None)
    return {
        'name': name,
        'model_type': 'SRModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': train
        },
        'network_g': {
            'type': 'EDSR',
            'num_in_ch': 3,
            'num_out_ch': 3,
            'num_feat': 8,
            'num_block': 1,
            'upscale': 4,
            'img_range': 255.
        },
        'path': {
            'pretrain_network_g': None,
            'resume_state': None
        },
        'train': {
            'optim_g': {
                'type': 'Adam',
                'lr': 1e-3
            },
            'total_iter': iters,
            'warmup_iter': -1,
            'scheduler': {
                'type': 'MultiStepLR',
                'milestones': [100],
                'gamma': 0.5
            },
            'pixel_opt': {
                'type': 'L1Loss',
                'loss_weight': 1.0
            }
        },
        'logger': {
            'print_freq': 1,
            'save_checkpoint_freq': 1000,
            'use_tb_logger': False
        },
    }


def straight_and_restarted(make_model, opt_straight, opt_restart, total, stop):
    """Run a distillation model straight through iterations 1..total, and again (into ``opt_restart``'s folders)
    stopped after ``stop``, saved as a BasicSR training state, rebuilt, resumed from that state and run to ``total``.

    Returns:
        tuple: ``(straight, restarted)`` models, for the caller to compare what they wrote.
    """
    import torch
    straight = make_model(opt_straight)
    for it in range(1, total + 1):
        straight.optimize_parameters(it)
    first = make_model(opt_restart)
    for it in range(1, stop + 1):
        first.optimize_parameters(it)
    first.save(0, stop)
    state = torch.load(osp.join(first.opt['path']['training_states'], f'{stop}.state'), weights_only=True)
    restarted = make_model(opt_restart)
    restarted.resume_training(state)
    for it in range(stop + 1, total + 1):
        restarted.optimize_parameters(it)
    return straight, restarted


# ------------------------------------------------------------------------------------------------ real image folders
IMDN_WEIGHTS = osp.join(REPO, 'weights', 'imdn_baseline.pth')
G_OPT = {
    'type': 'SRVGGNetCompact',
    'num_in_ch': 3,
    'num_out_ch': 3,
    'num_feat': 8,
    'num_conv': 2,
    'upscale': 4,
    'act_type': 'prelu'
}


def copy_images(folder, names, sub='t91'):
    """Copy the bundled training images ``names`` of ``data/train/<sub>`` into ``folder`` (made); returns it as str."""
    os.makedirs(folder, exist_ok=True)
    for name in names:
        shutil.copy(data_path('data', 'train', sub, name), osp.join(folder, name))
    return str(folder)


def add_small_image(folder, name='tiny'):
    """Write ``<name>.png`` into ``folder``: a real 28x28 crop of T91 t1, smaller than one 32x32 patch."""
    import cv2
    cv2.imwrite(osp.join(folder, f'{name}.png'), cv2.imread(data_path('data', 'train', 't91', 't1.png'))[:28, :28])


def idc_images(tmp_path):
    """``<tmp_path>/hr`` holding T91 tt27 and t20 and ``tiny.png`` (smaller than one patch); returns its path."""
    folder = copy_images(osp.join(tmp_path, 'hr'), ['tt27.png', 't20.png'])
    add_small_image(folder)
    return folder


def gsdd_classes(tmp_path, name='classes'):
    """``<tmp_path>/<name>``: two real classes, tt (T91 tt1-tt3) and bsd (three BSD200 images); returns its path."""
    root = osp.join(tmp_path, name)
    copy_images(osp.join(root, 'tt'), ['tt1.png', 'tt2.png', 'tt3.png'])
    copy_images(osp.join(root, 'bsd'), ['100075.png', '100080.png', '100098.png'], sub='bsd200')
    return str(root)


def generator_weights(path):
    """Save a tiny :data:`G_OPT` generator initialised after ``torch.manual_seed(0)`` at ``path``; returns it as str."""
    import torch

    from basicsr.archs.srvgg_arch import SRVGGNetCompact
    os.makedirs(osp.dirname(str(path)), exist_ok=True)
    torch.manual_seed(0)
    net = SRVGGNetCompact(**{k: v for k, v in G_OPT.items() if k != 'type'})
    torch.save({'params': net.state_dict()}, path)
    return str(path)


# ------------------------------------------------------------------------------------------------ tiny option dicts
def tiny_run_options(name, model_type, dataset, total_iter, distilled_root, print_freq=1, save_checkpoint_freq=1000):
    """A tiny CPU run of a distillation model on ``dataset`` (a datasets.train dict; one image a batch, no shuffle)."""
    loader = dict(use_shuffle=False, num_worker_per_gpu=0, batch_size_per_gpu=1, dataset_enlarge_ratio=1)
    return {
        'name': name,
        'model_type': model_type,
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': dict(dataset, **loader, prefetch_mode=None)
        },
        'path': {
            'distilled_root': distilled_root,
            'resume_state': None
        },
        'train': {
            'total_iter': total_iter,
            'warmup_iter': -1
        },
        'logger': {
            'print_freq': print_freq,
            'save_checkpoint_freq': save_checkpoint_freq,
            'use_tb_logger': False
        },
    }


def tiny_idc_distill(T, **changes):
    """IDC's ``distill`` section: ``T`` iterations per instance, small RLFF / NCFD, real init; ``changes`` on top."""
    return dict(
        {
            'ratio': 0.1,
            'init': 'real',
            'iters_per_instance': T,
            'warmup_iters': 2,
            'assign_iters': 4,
            'assign_steps': 2,
            'num_groups': 3,
            'real_batch_size': 16,
            'rlff': {
                'kernel_size': 3,
                'num_channels': 16,
                'patch_size': 4
            },
            'ncfd': {
                'num_freqs': 64,
                'alpha': 0.5,
                'bank_size': 256
            },
            'weights': {
                'ins': 1.0,
                'group': 1.0,
                'pair': 0.1
            },
            'optim': {
                'type': 'Adam',
                'lr': 0.01
            }
        }, **changes)


def tiny_idc_options(name, hr, distilled_root, distill, dataset_name='train', **run):
    """IDCModel with the real IMDN teacher on the instances of ``hr`` (32x32 patches, stride 16), 3 x T iterations."""
    dataset = {
        'name': dataset_name,
        'type': 'SRInstanceDataset',
        'dataroot_gt': hr,
        'gt_size': 32,
        'stride': 16,
        'io_backend': {
            'type': 'disk'
        }
    }
    opt = tiny_run_options(name, 'IDCModel', dataset, 3 * distill['iters_per_instance'], distilled_root, **run)
    opt['network_t'] = {'type': 'IMDN', 'block_type': 'imdb_ntire22', 'upscale': 4}
    opt['path'].update(pretrain_network_t=IMDN_WEIGHTS, strict_load_t=True, ignore_resume_networks=['network_t'])
    opt['distill'] = distill
    return opt


IDC_T = 6  # iterations per instance in the IDC model tests


def idc_distill_opt(tmp_path, hr_folder, **distill):
    """The IDC model tests' options: T = :data:`IDC_T`, assign_iters 3, set under ``<tmp_path>/distilled``."""
    return tiny_idc_options(
        'idc_test',
        hr_folder,
        osp.join(tmp_path, 'distilled'),
        dict(tiny_idc_distill(IDC_T, assign_iters=3), **distill),
        dataset_name='test',
        print_freq=6)


def bare_idc_opt(tmp_path, hr_folder, T=2, **distill):
    """IDCModel with only the keys the model reads (no loader, logger or strict-load keys), for error tests."""
    cfg = {
        'ratio': 0.1,
        'iters_per_instance': T,
        'warmup_iters': 0,
        'assign_iters': 1,
        'assign_steps': 1,
        'num_groups': 2,
        'real_batch_size': 16,
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
    }
    cfg.update(distill)
    return {
        'name': 'idc_bad',
        'model_type': 'IDCModel',
        'scale': 4,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': {
                'name': 'test',
                'type': 'SRInstanceDataset',
                'dataroot_gt': hr_folder,
                'gt_size': 32,
                'stride': 32
            }
        },
        'network_t': {
            'type': 'IMDN',
            'block_type': 'imdb_ntire22',
            'upscale': 4
        },
        'path': {
            'pretrain_network_t': IMDN_WEIGHTS,
            'distilled_root': str(tmp_path / 'distilled'),
            'resume_state': None
        },
        'distill': cfg,
        'train': {
            'total_iter': 10 * T
        },
    }


def tiny_gsdd_distill(iters_per_class, **changes):
    """GSDD's ``distill`` section: IPC 3, ``iters_per_class``, a 4-channel extractor, 3 inversion steps."""
    return dict(
        {
            'ipc': 3,
            'iters_per_class': iters_per_class,
            'batch_real': 4,
            'lam': 0.1,
            'chunk_size': 2,
            'extractor': {
                'num_feat': 4,
                'norm': 'instance'
            },
            'inversion': {
                'iters': 3,
                'lr': 0.01,
                'w_feat': 0.0,
                'w_pix': 1.0
            }
        }, **changes)


def tiny_gsdd_options(name, dataroot, distilled_root, weights, distill, total_iter, dataset_name='train', **run):
    """GSDDModel with the tiny :data:`G_OPT` generator (``weights``) on the class folders of ``dataroot``."""
    dataset = {
        'name': dataset_name,
        'type': 'SRClassFolderDataset',
        'dataroot_gt': dataroot,
        'gt_size': 32,
        'io_backend': {
            'type': 'disk'
        }
    }
    opt = tiny_run_options(name, 'GSDDModel', dataset, total_iter, distilled_root, **run)
    opt['network_g'] = dict(G_OPT)
    opt['path'].update(pretrain_network_g=weights, strict_load_g=True, ignore_resume_networks=['network_g'])
    opt['distill'] = distill
    return opt


def gsdd_opt(tmp_path, dataroot, **distill):
    """The GSDD model tests' options: 3 iterations per class, 2 classes, weights and set under ``tmp_path``."""
    cfg = dict(tiny_gsdd_distill(3), **distill)
    weights = generator_weights(osp.join(tmp_path, 'g.pth'))
    return tiny_gsdd_options(
        'gsdd_test',
        dataroot,
        osp.join(tmp_path, 'distilled'),
        weights,
        cfg,
        2 * cfg['iters_per_class'],
        dataset_name='test')


def tiny_minimax_options(name, hr, distilled_root, finetune_iters, dataset_name='train', **run):
    """MinimaxDiffusionModel with tiny DiT and VAE on ``hr`` (64x64 patches): stage 1, ``finetune_iters``, 2 classes."""
    dataset = {
        'name': dataset_name,
        'type': 'DistillStageDataset',
        'length': 10,
        'dataroot_gt': hr,
        'gt_size': 64,
        'stride': 64
    }
    opt = tiny_run_options(name, 'MinimaxDiffusionModel', dataset, 1 + finetune_iters + 2, distilled_root, **run)
    opt['distill'] = {
        'stage1': {
            'threshold': 'median',
            'extractor': {
                'type': 'color_gradient'
            },
            'k': 2,
            'seed': 0
        },
        'dit': {
            'config': 'tiny'
        },
        'vae': {
            'config': 'tiny'
        },
        'finetune': {
            'iters': finetune_iters,
            'batch_size': 2,
            'ema_decay': 0.9
        },
        'sample': {
            'images_per_class': 2,
            'steps': 2,
            'guidance_scale': 4.0,
            'seed': 0
        },
    }
    return opt


def minimax_opt(tmp_path, finetune_iters=3):
    """The Minimax model tests' options: T91 tt1-tt3 in ``<tmp_path>/hr``, set under ``<tmp_path>/distilled``."""
    hr = osp.join(tmp_path, 'hr')
    if not osp.exists(hr):
        copy_images(hr, ['tt1.png', 'tt2.png', 'tt3.png'])
    return tiny_minimax_options(
        'minimax_test', hr, osp.join(tmp_path, 'distilled'), finetune_iters, dataset_name='stages')


# ------------------------------------------------------------------------------------------------ the subprocess runs
# the options of test_kill_resume.py, test_run_lock.py, test_multiprocess.py, ...: set under the run's cwd
def seeded_generator_weights(path):
    """Save a tiny :data:`G_OPT` generator from a seeded generator of its own at ``path`` (the global RNG untouched)."""
    import torch

    from basicsr.archs.srvgg_arch import SRVGGNetCompact
    net = SRVGGNetCompact(**{k: v for k, v in G_OPT.items() if k != 'type'})
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    torch.save({'params': net.state_dict()}, path)


def idc_run_options(data):
    """IDC: instances t20 (8 steps), tiny (smaller than a patch: an empty unit), tt27 (8 steps, 34 pairs)."""
    hr = osp.join(data, 'idc_hr')
    if not osp.isdir(hr):
        copy_images(hr, ['tt27.png', 't20.png'])
        add_small_image(hr)
    return tiny_idc_options('idc_kill', hr, 'distilled', tiny_idc_distill(8), save_checkpoint_freq=3)


def gsdd_run_options(data):
    """GSDD: classes bsd and tt (three real images each), IPC 3, 4 iterations per class."""
    weights = osp.join(data, 'gsdd_g.pth')
    if not osp.isdir(osp.join(data, 'gsdd_classes')):
        gsdd_classes(data, 'gsdd_classes')
        seeded_generator_weights(weights)
    root = osp.join(data, 'gsdd_classes')
    return tiny_gsdd_options('gsdd_kill', root, 'distilled', weights, tiny_gsdd_distill(4), 8, save_checkpoint_freq=5)


def minimax_run_options(data):
    """Minimax-SR: stage 1 (iteration 1), 4 fine-tuning iterations (2-5), 2 pseudo-classes of 2 images (6-7)."""
    hr = osp.join(data, 'minimax_hr')
    if not osp.isdir(hr):
        copy_images(hr, ['tt1.png', 'tt2.png', 'tt3.png'])
    opt = tiny_minimax_options('minimax_kill', hr, 'distilled', 4, save_checkpoint_freq=2)
    opt['datasets']['train']['io_backend'] = {'type': 'disk'}  # as for IDC and GSDD (the stage dataset ignores it)
    return opt


def idc_batched_run_options(data):
    """IDC with distill.instances_per_step 3: t20, tiny and tt27 in one batch (iterations 1..8; tiny written at 1)."""
    opt = idc_run_options(data)
    opt['name'] = 'idc_batched_kill'
    opt['distill']['instances_per_step'] = 3
    opt['train']['total_iter'] = 8
    return opt


OPTIONS = {
    'idc': idc_run_options,
    'idc_batched': idc_batched_run_options,
    'gsdd': gsdd_run_options,
    'minimax': minimax_run_options
}
TRAIN = osp.join(REPO, 'basicsr_distill', 'train.py')
RUN_TIMEOUT = 120  # seconds for one process, a safety net only
# manifest fields that legitimately differ between two runs (timestamps, wall time, this run's option paths)
VOLATILE = ('created', 'updated', 'wall_time_s', 'options')


def idc_run(tmp_path, **changes):
    """:func:`idc_run_options` with its images under ``<tmp_path>/data`` and top-level ``changes``."""
    opt = OPTIONS['idc'](str(tmp_path / 'data'))
    opt.update(changes)
    return opt


def start_run(opt, cwd, *extra, nproc=None):
    """Start ``basicsr_distill/train.py -opt <cwd>/<name>.yml [extra]`` in ``cwd`` (one thread, CPU only).

    With ``nproc``: under ``torchrun --standalone --nproc_per_node=nproc ... --launcher pytorch``, in a process group
    of its own (so that a SIGKILL of the group reaches every rank).
    """
    import pathlib
    import subprocess
    import sys
    os.makedirs(cwd, exist_ok=True)
    opt_path = osp.join(cwd, f'{opt["name"]}.yml')
    if not osp.isfile(opt_path):
        write_option_file(opt, pathlib.Path(opt_path))
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    log = open(osp.join(cwd, f'run_{len([f for f in os.listdir(cwd) if f.startswith("run_")])}.log'), 'w')
    cmd = [sys.executable, TRAIN, '-opt', opt_path, *extra]
    if nproc:
        cmd = [
            sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', *cmd[1:],
            '--launcher', 'pytorch'
        ]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=bool(nproc))
    proc.log_file = log
    return proc


def wait_run(proc):
    """Wait for ``proc`` (killed after :data:`RUN_TIMEOUT` s), close its log; returns ``(exit status, output)``."""
    import subprocess
    try:
        rc = proc.wait(RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    proc.log_file.close()
    with open(proc.log_file.name) as f:
        return rc, f.read()


def finish(proc):
    """Wait for ``proc``; fail with its log if it does not exit 0."""
    rc, out = wait_run(proc)
    if rc != 0:
        pytest.fail(f'{proc.args} exited with {rc}:\n{out[-4000:]}')


def failed(proc):
    """Wait for ``proc``, which must exit non-zero; returns its output."""
    rc, out = wait_run(proc)
    assert rc != 0, f'{proc.args} exited 0:\n{out[-3000:]}'
    return out


def stop(*procs):
    """Kill what is still running (a test that failed half way)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(proc, condition, what):
    """Poll ``condition(proc)`` every 2 ms; fail naming ``what`` if the run ends or times out first."""
    import time
    deadline = time.monotonic() + RUN_TIMEOUT
    while not condition(proc):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f'the run ended (rc {proc.returncode}) before {what}')
        time.sleep(0.002)


def descendants(pid):
    """Process ids below ``pid`` (from /proc: torchrun starts every rank in a session of its own)."""
    import glob
    found = []
    for task in glob.glob(f'/proc/{pid}/task/*/children'):
        try:
            with open(task) as f:
                children = [int(v) for v in f.read().split()]
        except OSError:
            continue
        for child in children:
            found += [child] + descendants(child)
    return found


def stop_group(proc):
    """SIGKILL torchrun and every rank at once (a crash of the machine) if it still runs; wait for it.

    torchrun puts each rank in a new session, so killing torchrun's process group alone would leave the ranks
    running; every descendant is killed, each with its own process group.
    """
    import signal
    if proc.poll() is None:
        pids = descendants(proc.pid) + [proc.pid]
        for pid in pids:
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait()
    if not proc.log_file.closed:
        proc.log_file.close()


def logged(iteration):
    """BasicSR's loop has logged ``iteration`` (print_freq 1): the process is in the next one, or saving."""
    import re

    def condition(proc):
        with open(proc.log_file.name) as f:
            done = [int(v) for v in re.findall(r'\[epoch:\s*\d+, iter:\s*(\d+),', f.read())]
        return bool(done) and max(done) >= iteration

    return condition


def state_iters(cwd, name):
    """The iterations of the training states under ``<cwd>/experiments/<name>``, sorted."""
    folder = osp.join(cwd, 'experiments', name, 'training_states')
    if not osp.isdir(folder):
        return []
    return sorted(int(f[:-len('.state')]) for f in os.listdir(folder) if f.endswith('.state'))


def train_in_process(opt, cwd, monkeypatch, *extra):
    """``basicsr_distill/train.py -opt <cwd>/<name>.yml [extra]`` in this process, in ``cwd``."""
    import pathlib
    import sys

    from basicsr_distill.utils import run_lock
    os.makedirs(cwd, exist_ok=True)
    path = write_option_file(opt, pathlib.Path(cwd, f'{opt["name"]}.yml'))
    with monkeypatch.context() as m:
        m.chdir(cwd)
        m.setattr(sys, 'argv', ['basicsr_distill/train.py', '-opt', path, *extra])
        run_lock.guarded_train_pipeline(cwd)


# ------------------------------------------------------------------------------------------------ what runs wrote
def listing(folder):
    """Relative paths of every file under ``folder``."""
    out = []
    for dirpath, _, files in os.walk(folder):
        out.extend(osp.relpath(osp.join(dirpath, f), folder) for f in files)
    return sorted(out)


def leftovers(cwd):
    """Temporary files anywhere under the run folder (distilled set, work dir, training states)."""
    return [f for f in listing(cwd) if osp.basename(f).startswith('.distill-tmp-') or f.endswith('.tmp')]


def assert_same_set(a, b):
    """The distilled sets under ``a/distilled`` and ``b/distilled`` are the same set, byte for byte."""
    from basicsr_distill.distilled_set import validate_distilled_set
    ra, rb = osp.join(a, 'distilled'), osp.join(b, 'distilled')
    ma = validate_distilled_set(ra, scale=4, require_complete=True)
    mb = validate_distilled_set(rb, scale=4, require_complete=True)
    assert [p['name'] for p in ma['pairs']] == [p['name'] for p in mb['pairs']]
    assert ma['units_finished'] == mb['units_finished']
    assert {k: v for k, v in ma.items() if k not in VOLATILE} == {k: v for k, v in mb.items() if k not in VOLATILE}
    names = {p['name'] for p in ma['pairs']}
    expected = ['distill.json', 'meta_info.txt'] + [
        f'{sub}/{n}.{ext}' for n in names for sub, ext in (('hr', 'png'), ('lr', 'png'), ('lr_float', 'npy'))
    ]
    assert listing(ra) == sorted(expected)  # nothing missing, nothing extra
    assert listing(rb) == sorted(expected)
    for rel in expected[1:]:
        with open(osp.join(ra, rel), 'rb') as fa, open(osp.join(rb, rel), 'rb') as fb:
            assert fa.read() == fb.read(), rel
    assert not leftovers(a) and not leftovers(b), (leftovers(a), leftovers(b))


def assert_complete(cwd):
    """The IDC run in ``cwd`` (:func:`idc_run_options`) left a complete, verified set of its three instances."""
    from basicsr_distill.distilled_set import validate_distilled_set
    manifest = validate_distilled_set(osp.join(cwd, 'distilled'), scale=4, require_complete=True, check_contents=True)
    assert manifest['units_finished'] == ['t20', 'tiny', 'tt27']


# ------------------------------------------------------------------------------------------------ batched IDC
BATCHED_NAMES = ('small', 't20', 't9', 'tt27')  # in unit order; small: 28x28, smaller than one 32x32 patch


@pytest.fixture(scope='module')
def hr_folder(tmp_path_factory):
    """A folder of the :data:`BATCHED_NAMES` instances (T91 t20, t9, tt27 and a 28x28 crop), one per module."""
    folder = tmp_path_factory.mktemp('batched') / 'hr'
    copy_images(folder, [f'{name}.png' for name in BATCHED_NAMES if name != 'small'])
    add_small_image(str(folder), 'small')
    return str(folder)


def idc_batched_opt(tmp_path, hr_folder, k):
    """:func:`idc_distill_opt` with ``k`` instances per step, run for every batch of the :data:`BATCHED_NAMES`."""
    opt = idc_distill_opt(tmp_path, hr_folder, instances_per_step=k)
    opt['train']['total_iter'] = -(-len(BATCHED_NAMES) // k) * IDC_T
    return opt


@pytest.fixture
def float64(monkeypatch):
    """Networks, x_hat and every IDC tensor in float64 (the real LR patches are cut in float32, then cast)."""
    import torch

    from basicsr_distill.data.sr_instance_dataset import SRInstanceDataset
    load = SRInstanceDataset.load_instance

    def load_float64(self, index):
        torch.set_default_dtype(torch.float32)  # BasicSR's imresize builds its weights in the default dtype
        try:
            data = load(self, index)
        finally:
            torch.set_default_dtype(torch.float64)
        return dict(data, lq=data['lq'].double())

    monkeypatch.setattr(SRInstanceDataset, 'load_instance', load_float64)
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def assert_close_sets(ref, root, atol=1e-4):
    """Same pair names and provenance; lr_float within ``atol``; PNGs within one 8-bit level; returns the worst."""
    import cv2
    import numpy as np

    from basicsr_distill.distilled_set import read_manifest
    a, b = read_manifest(ref), read_manifest(root)
    assert b['complete'] and a['units_finished'] == b['units_finished']
    assert [p['name'] for p in a['pairs']] == [p['name'] for p in b['pairs']]
    strip = [[{k: v for k, v in p.items() if k != 'sha256'} for p in m['pairs']] for m in (a, b)]
    assert strip[0] == strip[1]  # provenance (instance, source image, init patch) and shapes; not the file hashes
    worst = 0.0
    for pair in a['pairs']:
        name = pair['name']
        fa, fb = (np.load(osp.join(r, 'lr_float', f'{name}.npy')) for r in (ref, root))
        worst = max(worst, float(np.abs(fa - fb).max()))
        for sub in ('lr', 'hr'):
            ia, ib = (cv2.imread(osp.join(r, sub, f'{name}.png')).astype(int) for r in (ref, root))
            assert np.abs(ia - ib).max() <= 1, f'{sub}/{name}.png'
    assert worst <= atol, worst
    return worst

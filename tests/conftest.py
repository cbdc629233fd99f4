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

"""Shared test fixtures: paths of the real data and weights.

``SHARED`` is the project's read-only ``shared/`` folder, beside the repository (as in CI) unless
``BASICSR_DISTILL_SHARED`` names another place. ``BUNDLED`` is the demo data inside the repository.
"""
import contextlib
import os
import os.path as osp

import pytest

import basicsr_distill  # noqa: F401  (compat fixes before anything imports torchvision)

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))
SHARED = os.environ.get('BASICSR_DISTILL_SHARED', osp.abspath(osp.join(REPO, '..', 'shared')))
BUNDLED = osp.join(REPO, 'datasets', 'demo')


def shared_path(*parts):
    """Path under shared/; fails (not skips) when missing, since CI always has shared/ beside the clone."""
    path = osp.join(SHARED, *parts)
    if not osp.exists(path):
        pytest.fail(f'{path} is missing: shared/ must sit beside the repository (or set BASICSR_DISTILL_SHARED)')
    return path


def pytest_sessionstart(session):
    if not osp.isdir(SHARED):
        raise pytest.UsageError(f'the tests read real images and weights from {SHARED}, which is missing: put the '
                                f'project\'s shared/ folder beside the repository or set BASICSR_DISTILL_SHARED')


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
    """A distillation model built as train_pipeline builds it, for unit-level checks without the loop."""
    opt = dict(opt, is_train=True, dist=False, rank=0, world_size=1)
    opt['path'] = dict(opt['path'], experiments_root=opt['path']['distilled_root'] + '_exp',
                       training_states=opt['path']['distilled_root'] + '_exp')
    os.makedirs(opt['path']['training_states'], exist_ok=True)
    opt['datasets'] = {'train': dict(opt['datasets']['train'], scale=opt['scale'], phase='train')}
    return model_cls(opt)


def tiny_edsr_options(name, dataset, gt_size=16, iters=2):
    """A tiny EDSR x4 SRModel config training ``iters`` iterations on ``dataset`` (a datasets.train dict)."""
    train = dict(dataset, name='distilled', io_backend={'type': 'disk'}, gt_size=gt_size, use_hflip=True,
                 use_rot=True, use_shuffle=True, num_worker_per_gpu=0, batch_size_per_gpu=2, dataset_enlarge_ratio=1,
                 prefetch_mode=None)
    return {
        'name': name, 'model_type': 'SRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'train': train},
        'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 4,
                      'img_range': 255.},
        'path': {'pretrain_network_g': None, 'resume_state': None},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': iters, 'warmup_iter': -1,
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 1000, 'use_tb_logger': False},
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

"""Shared test fixtures: paths of the real data and weights.

``SHARED`` is the project's read-only ``shared/`` folder, beside the repository (as in CI) unless
``BASICSR_DISTILL_SHARED`` names another place. ``BUNDLED`` is the demo data inside the repository.
"""
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

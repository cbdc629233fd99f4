"""Test entry point with BasicSR's CLI: ``python basicsr_distill/test.py -opt options/test/....yml``.

``results/`` is written under the current directory. BasicSR's ``test_pipeline`` runs with the experiment name
checked and a live run's folder never archived: see :func:`basicsr_distill.utils.run_lock.guarded_test_pipeline`.
"""
import os

import basicsr_distill  # noqa: F401

# isort: split
from basicsr_distill.utils.run_lock import guarded_test_pipeline

if __name__ == '__main__':
    guarded_test_pipeline(os.getcwd())

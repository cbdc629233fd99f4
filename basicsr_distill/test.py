"""Test entry point with BasicSR's CLI: ``python basicsr_distill/test.py -opt options/test/....yml``.

``results/`` is written under the current directory.
"""
import os

import basicsr_distill  # noqa: F401

# isort: split
from basicsr.test import test_pipeline

if __name__ == '__main__':
    test_pipeline(os.getcwd())

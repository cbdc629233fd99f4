"""Training / distillation entry point with BasicSR's CLI.

Usage: ``python basicsr_distill/train.py -opt options/distill/idc_demo.yml [--launcher none] [--auto_resume]
[--debug] [--force_yml key1:key2=value]``. ``experiments/``, ``tb_logger/`` are written under the current
directory.
"""
import os

import basicsr_distill  # noqa: F401  (compat fixes and registration before basicsr.train is imported)

# isort: split
from basicsr.train import train_pipeline

if __name__ == '__main__':
    train_pipeline(os.getcwd())

"""Training / distillation entry point with BasicSR's CLI.

Usage: ``python basicsr_distill/train.py -opt options/distill/idc_demo.yml [--launcher none] [--auto_resume]
[--debug] [--force_yml key1:key2=value]``. ``experiments/``, ``tb_logger/`` are written under the current
directory. BasicSR's ``train_pipeline`` runs with one run per output folder (the experiment folder and
``path.distilled_root`` are locked, their write access checked at start-up, and a failed start removes what it
created): see :mod:`basicsr_distill.utils.run_lock`.
"""
import os

import basicsr_distill  # noqa: F401  (compat fixes and registration before basicsr.train is imported)

# isort: split
from basicsr_distill.utils.run_lock import guarded_train_pipeline

if __name__ == '__main__':
    guarded_train_pipeline(os.getcwd())

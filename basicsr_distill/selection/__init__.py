"""Coreset and pruning baselines: functions from a patch pool to the indices of the chosen patches.

:func:`~basicsr_distill.selection.pool.select_subset` (and its command line ``scripts/select_subset.py``) runs them on
the patch pool of an option file and writes the chosen real pairs in the distilled-set format.
"""
from basicsr_distill.selection.dcsr import (select_dcsr, select_dcsr_from_descriptors, texture_complexity,
                                            texture_features)
from basicsr_distill.selection.features import patch_features, random_feature_network
from basicsr_distill.selection.herding import select_herding
from basicsr_distill.selection.kcenter import select_kcenter
from basicsr_distill.selection.pool import select_subset
from basicsr_distill.selection.psnr_bic_selection import (select_psnr_bic, select_psnr_bic_lowest,
                                                          select_psnr_bic_threshold)
from basicsr_distill.selection.random_selection import select_random

__all__ = [
    'select_random', 'select_herding', 'select_kcenter', 'select_dcsr', 'select_dcsr_from_descriptors',
    'texture_complexity', 'texture_features', 'select_psnr_bic', 'select_psnr_bic_threshold', 'select_psnr_bic_lowest',
    'patch_features', 'random_feature_network', 'select_subset'
]

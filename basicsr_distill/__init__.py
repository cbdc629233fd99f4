"""basicsr_distill: dataset distillation for image super-resolution as a BasicSR plugin.

Importing the package applies the compat fixes (before anything imports torchvision) and registers the
plugin's archs, datasets, losses and models in BasicSR's registries.
"""
from basicsr_distill import compat

compat.apply()

from basicsr_distill import archs, data, losses, models  # noqa: E402,F401
from basicsr_distill.version import __version__  # noqa: E402

__all__ = ['__version__', 'archs', 'data', 'losses', 'models']

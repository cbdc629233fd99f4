"""Import every ``*_dataset.py`` module of this folder so that its classes register in BasicSR."""
import importlib
from os import path as osp

from basicsr.utils import scandir

_folder = osp.dirname(osp.abspath(__file__))
_names = sorted(osp.splitext(osp.basename(v))[0] for v in scandir(_folder) if v.endswith('_dataset.py'))
_modules = [importlib.import_module(f'basicsr_distill.data.{name}') for name in _names]

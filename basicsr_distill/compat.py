"""Import-time fixes for the torchvision / BasicSR 1.4.2 combination this project supports (docs/INSTALL.md).

Each fix checks whether its problem occurs and does nothing otherwise:

1. ``torchvision::nms`` / ``qnms`` schemas defined when torchvision's ``_C`` cannot load, so the import succeeds.
2. ``torchvision.transforms.functional_tensor`` aliased to ``_functional_tensor`` (BasicSR imports the old name).
3. Without CUDA, ``basicsr.train.load_resume_state`` loads onto the CPU, through
   :func:`~basicsr_distill.utils.checkpoint.read_checkpoint`.
4. Without CUDA, ``basicsr.utils.dist_util._init_dist_pytorch`` uses ``gloo`` and no CUDA call.
5. ``--force_yml`` values read as YAML scalars (:func:`force_yml_value`) where BasicSR reads ``-0.1`` as a string.
6. ``BaseModel.load_network`` replaced by :func:`load_network_checked` (``weights_only=True`` always, files named).

``apply()`` is idempotent and is called by ``import basicsr_distill`` before anything imports torchvision.
"""
import ast
import importlib.util
import math
import os
import os.path as osp
import sys
import torch
import yaml

_TV_LIBRARY = None  # keeps the torch.library definitions alive for the life of the process
_APPLIED = False
_MKDIR_AND_RENAME = None  # BasicSR's own, wrapped by fix_mkdir_and_rename


def _torchvision_ops_loadable():
    """True if torchvision's compiled ops load (or torchvision is absent)."""
    spec = importlib.util.find_spec('torchvision')
    if spec is None or not spec.submodule_search_locations:
        return True
    tv_dir = list(spec.submodule_search_locations)[0]
    libs = [f for f in sorted(__import__('os').listdir(tv_dir)) if f.startswith('_C') and f.endswith(('.so', '.pyd'))]
    if not libs:
        return False
    try:
        torch.ops.load_library(osp.join(tv_dir, libs[0]))
    except (OSError, RuntimeError):
        return False
    return True


def _has_op(name):
    try:
        torch._C._dispatch_has_kernel_for_dispatch_key(f'torchvision::{name}', 'Meta')
    except RuntimeError:
        return False
    return True


def fix_torchvision_ops():
    """Define the ``torchvision::nms`` and ``torchvision::qnms`` schemas when torchvision's ``_C`` cannot load (fix 1).

    Returns:
        bool: True if schemas were defined here, False if nothing was needed.
    """
    global _TV_LIBRARY
    if 'torchvision' in sys.modules or _TV_LIBRARY is not None:
        return False
    if _torchvision_ops_loadable() or _has_op('nms'):
        return False
    _TV_LIBRARY = torch.library.Library('torchvision', 'FRAGMENT')  # noqa: TOR901
    for name in ('nms', 'qnms'):
        if not _has_op(name):
            _TV_LIBRARY.define(f'{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    return True


def fix_functional_tensor():
    """Alias ``torchvision.transforms.functional_tensor`` to ``_functional_tensor`` if only the latter exists."""
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules or importlib.util.find_spec('torchvision') is None:
        return False
    try:
        if importlib.util.find_spec(name) is not None:
            return False
    except ModuleNotFoundError:
        pass
    sys.modules[name] = importlib.import_module('torchvision.transforms._functional_tensor')
    return True


def _load_resume_state_cpu(opt):
    """BasicSR's ``load_resume_state`` with the state mapped to the CPU (used only where CUDA is unavailable)."""
    from basicsr.utils import check_resume, scandir

    resume_state_path = None
    if opt['auto_resume']:
        state_path = osp.join('experiments', opt['name'], 'training_states')
        if osp.isdir(state_path):
            states = list(scandir(state_path, suffix='state', recursive=False, full_path=False))
            if states:
                latest = max(float(v.split('.state')[0]) for v in states)
                resume_state_path = osp.join(state_path, f'{latest:.0f}.state')
                opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']
    if resume_state_path is None:
        return None
    if not osp.isfile(resume_state_path):
        raise FileNotFoundError(f'Training state not found: "{resume_state_path}" (path.resume_state).')
    from basicsr_distill.utils.checkpoint import read_checkpoint
    try:
        resume_state = read_checkpoint(resume_state_path, 'training state (path.resume_state)')
    except ValueError as err:  # an empty, truncated or foreign state: say how to go on without it
        raise ValueError(f'{err} {_resume_advice(resume_state_path, opt["auto_resume"])}') from err.__cause__
    check_resume(opt, resume_state['iter'])
    return resume_state


def _resume_advice(path, auto_resume):
    """What to do with an unreadable training state ``path`` (it is never skipped silently)."""
    folder, name = osp.split(path)
    iters = []
    for other in os.listdir(folder or '.') if osp.isdir(folder or '.') else []:
        stem = other[:-len('.state')]
        if other.endswith('.state') and other != name and stem.isdigit():
            iters.append(int(stem))
    try:
        current = int(name[:-len('.state')])
    except ValueError:
        current = None
    older = max((i for i in iters if current is None or i < current), default=None)
    if not auto_resume:
        return 'Point path.resume_state at another state, or start without one.'
    if older is None:
        return (f'It is the only training state in {folder}: move it away and rerun with --auto_resume (finished units '
                'are kept, the unfinished one starts again).')
    return (f'Move it away and rerun with --auto_resume to resume from the previous state, '
            f'{osp.join(folder, f"{older}.state")} (finished units are kept).')


def fix_cpu_resume():
    """Make ``basicsr.train.load_resume_state`` work without CUDA. No-op where CUDA is available."""
    if torch.cuda.is_available():
        return False
    import basicsr.train
    if basicsr.train.load_resume_state is not _load_resume_state_cpu:
        basicsr.train.load_resume_state = _load_resume_state_cpu
    return True


def load_network_checked(self, net, load_path, strict=True, param_key='params'):
    """BasicSR 1.4.2's ``BaseModel.load_network``, the file read by ``utils.checkpoint.read_checkpoint`` (fix 6).

    Args:
        net (nn.Module): The network (may be wrapped in DataParallel / DistributedDataParallel).
        load_path (str): The weights file.
        strict (bool): As ``nn.Module.load_state_dict``. Default: True.
        param_key (str | None): The entry holding the weights (``params`` if it is missing); None: the whole file.
            Default: ``'params'``.

    Raises:
        FileNotFoundError: ``load_path`` does not exist (named).
        ValueError: The file pickles Python objects (refused, never loaded) or is corrupt or truncated; the message
            names the file and its option.
        RuntimeError: As ``load_state_dict`` (keys that do not fit, with ``strict``).
    """
    from copy import deepcopy

    from basicsr.utils import get_root_logger
    from basicsr_distill.utils.checkpoint import read_checkpoint
    logger = get_root_logger()
    net = self.get_bare_model(net)
    path_opt = (getattr(self, 'opt', None) or {}).get('path') or {}
    keys = [k for k, v in path_opt.items() if k.startswith('pretrain_network') and v == load_path]
    load_net = read_checkpoint(load_path, f'pretrained weights (path.{keys[0]})' if keys else 'pretrained weights')
    if param_key is not None:
        if param_key not in load_net and 'params' in load_net:
            param_key = 'params'
            logger.info('Loading: params_ema does not exist, use params.')
        load_net = load_net[param_key]
    logger.info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].')
    for k, v in deepcopy(load_net).items():  # remove unnecessary 'module.'
        if k.startswith('module.'):
            load_net[k[7:]] = v
            load_net.pop(k)
    self._print_different_keys_loading(net, load_net, strict)
    net.load_state_dict(load_net, strict=strict)


def fix_basicsr_load_network():
    """Make BasicSR's models read weights with :func:`load_network_checked` (fix 6). Returns True."""
    from basicsr.models.base_model import BaseModel
    if BaseModel.load_network is not load_network_checked:
        BaseModel.load_network = load_network_checked
    return True


def _init_dist_pytorch_cpu(backend, **kwargs):
    """BasicSR's ``_init_dist_pytorch`` without CUDA calls; ``'nccl'`` becomes ``'gloo'``, ``**kwargs`` go to
    ``init_process_group`` (rank, world size and rendezvous from torchrun's environment).
    """
    import torch.distributed as dist
    if backend == 'nccl':
        backend = 'gloo'
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
        raise RuntimeError('--launcher pytorch needs the environment of torchrun (RANK, WORLD_SIZE, MASTER_ADDR, '
                           'MASTER_PORT): start it as torchrun --nproc_per_node=N basicsr_distill/train.py -opt ... '
                           '--launcher pytorch')
    dist.init_process_group(backend=backend, **kwargs)


def fix_cpu_dist_init():
    """Make ``--launcher pytorch`` initialise ``gloo`` without CUDA. No-op where CUDA is available (``nccl``)."""
    if torch.cuda.is_available():
        return False
    from basicsr.utils import dist_util
    if dist_util._init_dist_pytorch is not _init_dist_pytorch_cpu:
        dist_util._init_dist_pytorch = _init_dist_pytorch_cpu
    return True


def force_yml_value(value):
    """Read the value of a ``--force_yml key=value`` entry (the text after ``=``) as a YAML scalar (fix 5).

    Returns:
        None | bool | int | float | list | dict | str: ``-0.1`` -> -0.1, ``1e-3`` -> 0.001, ``~`` / ``null`` /
        ``None`` -> None, ``true`` / ``False`` / ``yes`` / ``off`` -> bool, ``010`` -> 10, ``[1, 2]`` -> [1, 2],
        ``{a: 1}`` -> {'a': 1}, ``'"1e-3"'`` -> '1e-3'; anything else (``abc``, ``inf``, ``2024-01-01``, empty,
        unparsable) unchanged, as a string.

    Raises:
        ValueError: ``!!float x`` where ``x`` is not a number (as BasicSR).
    """
    if value == '~' or value.lower() in ('none', 'null'):
        return None
    if value.lower() in ('true', 'false'):
        return value.lower() == 'true'
    if value.startswith('!!float'):
        return float(value.replace('!!float', ''))
    if value.isascii() and value.isdigit():
        return int(value)
    if value.startswith('['):
        try:
            return ast.literal_eval(value)  # BasicSR evaluates lists as Python
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, (int, float)):  # bool is an int
        return parsed
    if isinstance(parsed, (list, dict)) and value.startswith(('[', '{')):
        return parsed
    if isinstance(parsed, str):
        if value.startswith(('"', "'")) or not parsed.isascii():
            return parsed  # quoted: a string, whatever it reads like (float() also reads non-ASCII digits)
        try:
            number = float(parsed)
        except ValueError:
            return parsed
        return number if math.isfinite(number) else parsed
    return value  # None from a comment, dates, block sequences ...: the text as given


def fix_force_yml_values():
    """Read ``--force_yml`` values as YAML scalars (:func:`force_yml_value`). No-op where BasicSR already does."""
    from basicsr.utils import options
    if options._postprocess_yml_value is force_yml_value:
        return True
    if options._postprocess_yml_value('-0.1') == -0.1:
        return False
    options._postprocess_yml_value = force_yml_value
    return True


def mkdir_and_rename_checked(path):
    """BasicSR's ``mkdir_and_rename`` (archive an existing ``path`` to ``<path>_archived_<time>``, then create it),
    refusing to move a folder that holds the current working directory.

    ``experiments/<name>`` with ``name: ..`` is the current folder itself: BasicSR alone would rename it (the
    repository, its ``.venv`` included). ``basicsr_distill/train.py`` and ``test.py`` refuse such a name earlier
    (:func:`basicsr_distill.utils.options.check_experiment_name`); this covers BasicSR's own CLI with the plugin.

    Raises:
        ValueError: ``path`` is the current working directory or one of its parents (names both; nothing is moved).
    """
    cwd = osp.realpath(os.getcwd())
    real = osp.realpath(path)
    if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
        raise ValueError(f'Refused to archive (rename) {path}: it holds the current working directory {cwd} (check the '
                         'option name: it must be one plain folder name). Nothing was moved.')
    return _MKDIR_AND_RENAME(path)


def fix_mkdir_and_rename():
    """Route BasicSR's ``make_exp_dirs`` through :func:`mkdir_and_rename_checked`."""
    global _MKDIR_AND_RENAME
    from basicsr.utils import misc
    if misc.mkdir_and_rename is not mkdir_and_rename_checked:
        _MKDIR_AND_RENAME = misc.mkdir_and_rename
        misc.mkdir_and_rename = mkdir_and_rename_checked
    return True


def apply():
    """Apply every fix that is needed here; safe to call more than once."""
    global _APPLIED
    if _APPLIED:
        return
    fix_torchvision_ops()
    fix_functional_tensor()
    fix_cpu_resume()
    fix_basicsr_load_network()
    fix_cpu_dist_init()
    fix_force_yml_values()
    fix_mkdir_and_rename()
    _APPLIED = True

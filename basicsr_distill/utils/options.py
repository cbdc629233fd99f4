"""Option files and sections: the one reader of BasicSR option files (:func:`read_option_file`), building a model
outside the train loop (:func:`build_model_from_options`), the checked merge of a section into its defaults
(:func:`merge_options`, :func:`check_ranges`, :func:`check_optimizer`) and the key checks BasicSR does not make
(:func:`check_dataset_keys`, :func:`check_path_keys`).

Option files are code (BasicSR's YAML loader runs their tags): read trusted files only.
"""
import copy
import difflib
import math
import numbers
import os
import os.path as osp
import re
import yaml

from basicsr.utils.options import ordered_yaml

#: Options whose default is a string but which also take None (``~``): a diffusers folder without subfolder.
_NULLABLE = frozenset({'distill.dit.subfolder', 'distill.vae.subfolder'})


def read_option_file(path):
    """A BasicSR option file read with BasicSR's loader, as nested OrderedDicts.

    Raises:
        FileNotFoundError: The file does not exist (named).
        ValueError: It does not hold a mapping (empty, a list, a scalar), naming the file.
        yaml.YAMLError: It is not valid YAML (with the line).
    """
    path = os.fspath(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'Option file not found: "{path}".')
    with open(path, encoding='utf-8') as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    if not isinstance(opt, dict):
        raise ValueError(f'Option file "{path}" does not hold a mapping of options (got {type(opt).__name__}).')
    return opt


def forced_seed(force_yml):
    """The ``manual_seed`` of the last ``manual_seed=<int>`` entry of ``--force_yml`` (``key1:key2=value``), or None."""
    seed = None
    for entry in force_yml or []:
        key, _, value = entry.partition('=')
        if key.strip() == 'manual_seed':
            seed = int(value.strip())
    return seed


def apply_forced_seed(opt, force_yml):
    """Seed again with a ``--force_yml`` ``manual_seed``, which BasicSR 1.4.2 applies after seeding; call it right after
    ``parse_options``. Without such an entry the RNG states are untouched.

    Returns:
        int | None: The seed applied (``manual_seed + rank``), or None.
    """
    if forced_seed(force_yml) is None:
        return None
    from basicsr.utils import set_random_seed
    seed = int(opt['manual_seed']) + int(opt.get('rank', 0))
    set_random_seed(seed)
    return seed


def check_experiment_name(name, option='name'):
    """Check that the experiment name is one plain folder name, before BasicSR joins it into a path (and archives an
    existing folder of that path: ``..`` would rename the current directory).

    Args:
        name: The option's value (any type).
        option (str): The option's name, for the message. Default: ``'name'``.

    Returns:
        str: ``name``, unchanged.

    Raises:
        ValueError: Not a string, empty, ``.`` or ``..``, a path separator, NUL or control character, or leading or
            trailing white space; naming the option and value.
    """
    problem = None
    if not isinstance(name, str):
        problem = f'is of type {type(name).__name__}, not a string'
    elif not name.strip():
        problem = 'is empty'
    elif name in ('.', '..'):
        problem = 'names the current or the parent folder'
    elif '/' in name or os.sep in name or (os.altsep and os.altsep in name):
        problem = 'holds a path separator'
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = 'holds a control character'
    elif name != name.strip():
        problem = 'starts or ends with white space'
    if problem is not None:
        raise ValueError(f'option {option}={name!r} {problem}: the experiment name must be one plain folder name '
                         '(BasicSR writes the run into experiments/<name> or results/<name> and renames an existing '
                         'folder of that path). Nothing was created or moved.')
    return name


def build_model_from_options(opt_or_path, root=None, distilled_root=None, num_gpu=None, model_cls=None):
    """A BasicSR model built from options as ``train_pipeline`` builds it, without the train loop (profilers, scripts,
    tests).

    The options are prepared as ``parse_options(is_train=True)`` does in one process (``dist`` False, rank 0,
    ``num_gpu: auto`` resolved, each dataset's ``phase`` and ``scale``); no seed, log, folder, dataloader or resume.

    Args:
        opt_or_path (dict | str): Options (deep-copied) or an option file.
        root (str | None): Sets (and creates) ``path.experiments_root`` and ``path.training_states``. Default: None.
        distilled_root (str | None): Sets ``path.distilled_root``. Default: None.
        num_gpu (int | str | None): Sets ``num_gpu`` (``'auto'``: every GPU). Default: None (the options' own).
        model_cls (type | None): The model class; None: ``MODEL_REGISTRY[model_type]``. Default: None.

    Returns:
        BaseModel: The model (``model.opt`` the prepared options).

    Raises:
        FileNotFoundError, ValueError: As :func:`read_option_file`; whatever the model raises on its options.
        KeyError: ``model_cls`` None and ``model_type`` missing or not registered.
    """
    import torch

    from basicsr.utils.registry import MODEL_REGISTRY

    opt = read_option_file(opt_or_path) if isinstance(opt_or_path, (str, os.PathLike)) else copy.deepcopy(opt_or_path)
    opt.update(is_train=True, dist=False, rank=0, world_size=1)
    if num_gpu is not None:
        opt['num_gpu'] = num_gpu
    if opt.get('num_gpu') == 'auto':
        opt['num_gpu'] = torch.cuda.device_count()
    for phase, dataset in (opt.get('datasets') or {}).items():
        dataset['phase'] = phase.split('_')[0]
        if 'scale' in opt:
            dataset['scale'] = opt['scale']
    if (root is not None or distilled_root is not None) and opt.get('path') is None:
        opt['path'] = {}
    if root is not None:
        os.makedirs(root, exist_ok=True)
        opt['path'].update(experiments_root=str(root), training_states=str(root))
    if distilled_root is not None:
        opt['path']['distilled_root'] = str(distilled_root)
    if model_cls is None:
        model_cls = MODEL_REGISTRY.get(opt['model_type'])
    return model_cls(opt)


def check_option_type(default, value, name):
    """``value`` checked against the type of ``default`` (bool, int, float or str) and normalised.

    Ints are accepted for floats (returned as float), integral floats for ints (returned as int); a bool is never a
    number nor a number a bool. Other defaults accept anything; None is accepted for the options of ``_NULLABLE``.

    Raises:
        ValueError: Naming the option ``name``, the expected type and the value.
    """
    if default is None or not isinstance(default, (bool, int, float, str)) or (value is None and name in _NULLABLE):
        return value
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), 'a bool (true / false)'
    elif isinstance(default, int):
        ok, expected = False, 'an int'
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            ok, value = True, int(value)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and \
                float(value).is_integer():
            ok, value = True, int(value)
    elif isinstance(default, float):
        ok, expected = isinstance(value, numbers.Real) and not isinstance(value, bool), 'a number (float or int)'
        value = float(value) if ok else value
    else:
        ok, expected = isinstance(value, str), 'a string'
    if ok:
        return value
    hint = ''
    if isinstance(value, str) and not isinstance(default, (bool, str)):
        hint = ' (PyYAML reads 1e-3 as a string: write 1.0e-3 or !!float 1e-3)'
    raise ValueError(f'option {name} must be {expected} like its default {default!r}, got {value!r} '
                     f'({type(value).__name__}){hint}')


def merge_options(defaults, given, prefix='distill'):
    """``defaults`` updated by ``given`` into a new dict (nested dicts merged), keys and types checked.

    Values are checked by :func:`check_option_type`; None, list and empty-dict defaults accept anything; non-empty dict
    defaults are merged key by key.

    Args:
        defaults (dict): The section's defaults (not modified).
        given (dict | None): The section as given (None: the defaults).
        prefix (str): Dotted name of the section, for the messages. Default: ``'distill'``.

    Raises:
        ValueError: ``given`` not a mapping, an unknown key, or a wrong type (naming ``<prefix>.<key>``).
    """
    if given is not None and not isinstance(given, dict):
        raise ValueError(f'option {prefix} must be a mapping of options, got {given!r} ({type(given).__name__})')
    out = dict(defaults)
    for key, value in (given or {}).items():
        if key not in defaults:
            raise ValueError(f'unknown option {prefix}.{key}; known: {sorted(defaults)}')
        if isinstance(defaults[key], dict) and defaults[key] and isinstance(value, dict):
            out[key] = merge_options(defaults[key], value, f'{prefix}.{key}')
        else:
            out[key] = check_option_type(defaults[key], value, f'{prefix}.{key}')
    return out


# --------------------------------------------------------------------------------------------- value ranges
def _dotted(section, key):
    value = section
    for part in key.split('.'):
        value = value[part]
    return value


def _in_range(value, rule):
    """Whether the number ``value`` satisfies ``rule`` (``'>= a'``, ``'> a'`` or an interval ``'[a, b)'``)."""
    if rule.startswith(('>=', '>')):
        op, low = rule.split()
        return value >= float(low) if op == '>=' else value > float(low)
    low, high = (float(v) for v in rule[1:-1].split(','))
    above = value >= low if rule[0] == '[' else value > low
    below = value <= high if rule[-1] == ']' else value < high
    return above and below


def check_ranges(section, rules, prefix='distill'):
    """Check the numeric options of a merged section against ``rules`` (dotted key -> ``'>= 0'``, ``'> 0'`` or an
    interval
    such as ``'[0, 1)'``), in order.

    Raises:
        ValueError: The first option not a finite number in its range, e.g. ``option distill.warmup_iters must be >= 0,
            got -6``.
    """
    for key, rule in rules.items():
        value = _dotted(section, key)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not _in_range(value, rule):
            where = f'in {rule}' if rule[0] in '[(' else rule
            raise ValueError(f'option {prefix}.{key} must be {where}, got {value!r}')


def check_optimizer(section, prefix):
    """Check an optimiser section (``{'type': <torch.optim class, default Adam>, 'lr', ...}``) before any unit uses it.

    ``lr`` finite and >= 0 (0, as the ``*_init`` controls use, logs a warning), ``betas`` a pair in [0, 1),
    ``weight_decay`` / ``momentum`` >= 0, ``eps`` > 0; then the optimiser is built once on a dummy parameter.

    Raises:
        ValueError: Naming the option (``<prefix>.lr``, ``<prefix>.betas``, ``<prefix>.type``, ...) and the value.
    """
    import torch
    options = dict(section)
    name = options.pop('type', 'Adam')
    cls = getattr(torch.optim, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f'option {prefix}.type must name a torch.optim optimiser (e.g. Adam), got {name!r}')
    rules = {'lr': '>= 0', 'weight_decay': '>= 0', 'momentum': '>= 0', 'eps': '> 0'}
    check_ranges(options, {k: v for k, v in rules.items() if k in options}, prefix)
    if options.get('lr') == 0:
        from basicsr.utils import get_root_logger
        get_root_logger().warning(f'option {prefix}.lr is 0: the optimised parameters keep their initial values (a '
                                  'control run)')
    if 'betas' in options:
        betas = options['betas']
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2
                and all(isinstance(b, numbers.Real) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
            raise ValueError(f'option {prefix}.betas must be a pair [beta1, beta2] of numbers in [0, 1), got '
                             f'{betas!r}')
        options['betas'] = tuple(float(b) for b in betas)
    try:
        cls([torch.zeros(1, requires_grad=True)], **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f'option {prefix} is refused by torch.optim.{name}: {err}') from err


# ------------------------------------------------------------------------------------- keys outside distill
#: Keys that BasicSR itself reads or sets in every ``datasets.<phase>`` section (``basicsr/utils/options.py``,
#: ``basicsr/data/__init__.py``, ``basicsr/train.py``).
BASICSR_DATASET_KEYS = frozenset({
    'name', 'type', 'phase', 'scale', 'io_backend', 'use_shuffle', 'num_worker_per_gpu', 'batch_size_per_gpu',
    'dataset_enlarge_ratio', 'prefetch_mode', 'pin_memory', 'persistent_workers', 'num_prefetch_queue'
})

#: ``path`` keys that BasicSR sets or reads (``parse_options``, ``check_resume``, ``train_pipeline``) and this
#: package's own; ``pretrain_network_<net>``, ``strict_load_<net>`` and ``param_key_<net>`` are known where a
#: ``network_<net>`` section exists.
KNOWN_PATH_KEYS = frozenset({
    'experiments_root', 'models', 'training_states', 'log', 'visualization', 'results_root', 'resume_state', 'root',
    'ignore_resume_networks', 'distilled_root'
})
_NETWORK_PATH_KEY = re.compile(r'^(pretrain_network|strict_load|param_key)_(.+)$')


def _did_you_mean(key, known):
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f' (did you mean {close[0]}?)' if close else ''


def check_dataset_keys(opt, own_keys, dataset_type):
    """Refuse a key of a ``datasets.<phase>`` section that neither BasicSR (:data:`BASICSR_DATASET_KEYS`) nor the
    dataset
    (``own_keys``) reads.

    Raises:
        ValueError: Naming ``datasets.<phase>.<key>``, a close known key if any, and the known keys.
    """
    known = BASICSR_DATASET_KEYS | set(own_keys)
    unknown = [k for k in opt if k not in known]
    if unknown:
        key = unknown[0]
        raise ValueError(f'unknown option datasets.{opt.get("phase", "<phase>")}.{key} of {dataset_type} (dataset '
                         f'{opt.get("name")!r}){_did_you_mean(key, known)}; it reads {sorted(set(own_keys))} '
                         "besides BasicSR's own keys")


def check_path_keys(opt):
    """Refuse ``path`` keys that nothing reads: ``pretrain_network_<net>``, ``strict_load_<net>``, ``param_key_<net>``
    without ``network_<net>``, and keys close to a known one (:data:`KNOWN_PATH_KEYS`, e.g. ``resume_sate``).

    Raises:
        ValueError: Naming ``path.<key>`` and what it was probably meant to be.
    """
    networks = [k[len('network_'):] for k in opt if isinstance(k, str) and k.startswith('network_')]
    network_keys = {f'{kind}_{net}' for net in networks for kind in ('pretrain_network', 'strict_load', 'param_key')}
    known = KNOWN_PATH_KEYS | network_keys
    for key in opt.get('path') or {}:
        if key in known:
            continue
        match = _NETWORK_PATH_KEY.match(str(key))
        if match:
            raise ValueError(f'unknown option path.{key}: there is no network_{match.group(2)} section for it'
                             f'{_did_you_mean(key, network_keys)}; the networks are {sorted(networks)}')
        hint = _did_you_mean(str(key), known)
        if hint:
            raise ValueError(f'unknown option path.{key}{hint}: BasicSR and this package do not read it')

"""Option files and option sections: the one reader of BasicSR option files (:func:`read_option_file`), the one way to
build a model from options outside BasicSR's train loop (:func:`build_model_from_options`), and the checked merge of
a section into its defaults that every distillation model uses for ``distill`` (:func:`merge_options`), with the
range and optimiser checks of its values (:func:`check_ranges`, :func:`check_optimizer`), and the key checks outside
``distill`` that BasicSR does not make (:func:`check_dataset_keys`, :func:`check_path_keys`).

Option files are code (BasicSR's YAML loader runs their tags, e.g. ``plugin: !!python/name:basicsr_distill.__name__``
imports the plugin): read trusted files only.
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
    """A BasicSR option file, read with BasicSR's own loader (``yaml.load(f, Loader=ordered_yaml()[0])``).

    Args:
        path (str): The YAML file.

    Returns:
        OrderedDict: The options (nested OrderedDicts, as BasicSR's ``parse_options`` reads them).

    Raises:
        FileNotFoundError: If the file does not exist (the message names it).
        ValueError: If it does not hold a mapping of options (an empty file, a list, a scalar), naming the file.
        yaml.YAMLError: If it is not valid YAML (PyYAML's message gives the line).
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
    """The ``manual_seed`` that a ``--force_yml`` list sets, or None.

    Args:
        force_yml (list[str] | None): ``--force_yml`` entries as BasicSR parses them (``key1:key2=value``).

    Returns:
        int | None: The value of a ``manual_seed=<int>`` entry (the last one), None where no entry sets it.
    """
    seed = None
    for entry in force_yml or []:
        key, _, value = entry.partition('=')
        if key.strip() == 'manual_seed':
            seed = int(value.strip())
    return seed


def apply_forced_seed(opt, force_yml):
    """Seed the run with a ``manual_seed`` given through ``--force_yml``, which BasicSR 1.4.2 misses.

    BasicSR's ``parse_options`` calls ``set_random_seed(opt['manual_seed'] + rank)`` *before* it applies
    ``--force_yml``, so ``--force_yml manual_seed=1`` changes the recorded option but every run still draws from the
    option file's seed. Called right after ``parse_options``, this seeds again, as BasicSR would have, with the forced
    value; without such an entry it does nothing (the RNG states are left exactly as BasicSR set them).

    Args:
        opt (dict): The parsed options (``manual_seed``, ``rank``).
        force_yml (list[str] | None): The ``--force_yml`` entries.

    Returns:
        int | None: The seed applied (``manual_seed + rank``), None where nothing was done.
    """
    if forced_seed(force_yml) is None:
        return None
    from basicsr.utils import set_random_seed
    seed = int(opt['manual_seed']) + int(opt.get('rank', 0))
    set_random_seed(seed)
    return seed


def check_experiment_name(name, option='name'):
    """Check that the experiment name is one plain folder name, before BasicSR joins it into a path.

    BasicSR writes a run into ``experiments/<name>`` (training) or ``results/<name>`` (testing) and renames an existing
    folder of that path to ``<path>_archived_<time>``: ``name: ..`` would rename the current directory, ``name: .``
    the whole ``experiments/`` folder, an absolute name or one with a separator a folder elsewhere.

    Args:
        name: The value of the option (any type: YAML and ``--force_yml`` give ints, None, ...).
        option (str): The option's name, for the message. Default: ``'name'``.

    Returns:
        str: ``name``, unchanged.

    Raises:
        ValueError: ``name`` is not a string, is empty, ``.`` or ``..``, holds a path separator, a NUL or another
            control character, or starts or ends with white space; the message names the option and the value.
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
    """A BasicSR model (a distillation model or any other) built from options as ``basicsr.train.train_pipeline``
    builds it, without the train loop: for profilers, scripts and tests that drive the model themselves.

    The options are prepared as ``parse_options(is_train=True)`` prepares them in a single process: ``is_train``
    True, ``dist`` False, ``rank`` 0, ``world_size`` 1, ``num_gpu: auto`` resolved to ``torch.cuda.device_count()``,
    every dataset given its ``phase`` (its key up to the first ``_``) and the top-level ``scale``. Unlike
    ``train_pipeline``, nothing else is done: no seed is set, no log file, experiment folder or dataloader is made,
    no training state is resumed.

    Args:
        opt_or_path (dict | str): Options (deep-copied: the caller's dict is not modified) or an option file
            (:func:`read_option_file`).
        root (str | None): Folder of what the model writes besides the distilled set: ``path.experiments_root``
            and ``path.training_states`` are set to it (it is created). None keeps the options' own. Default: None.
        distilled_root (str | None): Sets ``path.distilled_root`` (the output set). None keeps the options' own.
            Default: None.
        num_gpu (int | str | None): Sets ``num_gpu`` (``'auto'``: ``torch.cuda.device_count()``). None keeps the
            options' own (``auto`` resolved). Default: None.
        model_cls (type | None): The model class; None takes ``MODEL_REGISTRY[model_type]`` (BasicSR's
            ``build_model``). Default: None.

    Returns:
        BaseModel: The model, built from the prepared options (``model.opt``).

    Raises:
        FileNotFoundError, ValueError: As :func:`read_option_file`; whatever the model raises on its options.
        KeyError: If ``model_cls`` is None and ``model_type`` is missing or not registered.
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
    """``value`` checked against the type of ``default`` (bool, int, float or str); returns it normalised.

    Ints are accepted for floats (returned as float); integral floats for ints (returned as int, e.g. YAML's
    ``!!float 1e4``); a bool is never a number and a number never a bool. Other defaults accept anything, and None
    is accepted for the options of ``_NULLABLE`` (``distill.dit.subfolder``, ``distill.vae.subfolder``).

    Args:
        default: The default value, whose type is required.
        value: The value given.
        name (str): The option's dotted name, for the message (``distill.<key>``).

    Returns:
        The value, normalised (int -> float for a float default, integral float -> int for an int default).

    Raises:
        ValueError: naming the option ``name``, the expected type and the value given.
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
    """``defaults`` updated by ``given`` (nested dicts merged), with the keys and types checked.

    A value whose default is a bool, an int, a float or a str must be of that type (see
    :func:`check_option_type`: ints are accepted for floats, integral floats for ints); defaults that are None,
    lists, or empty dicts accept any value; non-empty dict defaults are merged key by key.

    Args:
        defaults (dict): The section's defaults (not modified).
        given (dict | None): The section as given (None: the defaults).
        prefix (str): Dotted name of the section, for the messages. Default: ``'distill'``.

    Returns:
        dict: The merged section (a new dict; nested dicts merged into new dicts).

    Raises:
        ValueError: ``given`` is not a mapping, an unknown key, or a value of the wrong type; the message names the
            option (``distill.<key>``).
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
    """Check that numeric options of a merged section lie in their ranges, in the order of ``rules``.

    Args:
        section (dict): The merged section (types already checked by :func:`merge_options`).
        rules (dict[str, str]): Dotted key -> range: ``'>= 0'``, ``'> 0'``, or an interval such as ``'[0, 1)'``.
        prefix (str): Dotted name of the section, for the messages. Default: ``'distill'``.

    Raises:
        ValueError: The first option that is not a finite number in its range, e.g. ``option distill.warmup_iters
            must be >= 0, got -6``.
    """
    for key, rule in rules.items():
        value = _dotted(section, key)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not _in_range(value, rule):
            where = f'in {rule}' if rule[0] in '[(' else rule
            raise ValueError(f'option {prefix}.{key} must be {where}, got {value!r}')


def check_optimizer(section, prefix):
    """Check an optimiser section (``{'type': <torch.optim class>, 'lr': ..., ...}``) before any unit uses it.

    ``lr`` must be a finite number >= 0 (0 keeps the parameters at their start: the benchmark's ``*_init`` controls
    use it; a warning is logged), ``betas`` a pair of numbers in [0, 1), ``weight_decay`` / ``momentum`` >= 0 and
    ``eps`` > 0 (where given); then the optimiser is built once on a dummy parameter, so that anything else torch
    refuses is found now, named, instead of at the first unit.

    Args:
        section (dict): The optimiser options (``type`` optional: Adam).
        prefix (str): Its dotted name, for the messages (e.g. ``'distill.optim'``).

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
    """Refuse a key of a ``datasets.<phase>`` section that neither BasicSR nor the dataset class reads (BasicSR would
    ignore a misspelt ``dataroot_gtt`` silently).

    Args:
        opt (dict): The dataset's options.
        own_keys (Iterable[str]): The keys the dataset class reads, besides :data:`BASICSR_DATASET_KEYS`.
        dataset_type (str): The class name, for the message.

    Raises:
        ValueError: Naming ``datasets.<phase>.<key>``, a close known key where there is one, and the known keys.
    """
    known = BASICSR_DATASET_KEYS | set(own_keys)
    unknown = [k for k in opt if k not in known]
    if unknown:
        key = unknown[0]
        raise ValueError(f'unknown option datasets.{opt.get("phase", "<phase>")}.{key} of {dataset_type} (dataset '
                         f'{opt.get("name")!r}){_did_you_mean(key, known)}; it reads {sorted(set(own_keys))} '
                         "besides BasicSR's own keys")


def check_path_keys(opt):
    """Refuse ``path`` keys that look like BasicSR's but that nothing reads (BasicSR ignores them silently).

    ``pretrain_network_<net>``, ``strict_load_<net>`` and ``param_key_<net>`` need a ``network_<net>`` section;
    another key is refused when it is close to a known one (:data:`KNOWN_PATH_KEYS`, or a network key of an existing
    network), e.g. ``resume_sate`` or ``distiled_root``. Other keys are left alone.

    Args:
        opt (dict): The whole options.

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

"""Option files and option sections: the one reader of BasicSR option files (:func:`read_option_file`), the one way to
build a model from options outside BasicSR's train loop (:func:`build_model_from_options`), and the checked merge of
a section into its defaults that every distillation model uses for ``distill`` (:func:`merge_options`).

Option files are code (BasicSR's YAML loader runs their tags, e.g. ``plugin: !!python/name:basicsr_distill.__name__``
imports the plugin): read trusted files only.
"""
import copy
import math
import numbers
import os
import os.path as osp
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

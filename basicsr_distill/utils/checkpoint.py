"""Building networks from option dicts and loading pretrained weights into them, with clear errors: the one place
of the package that does either (:func:`build_network`, :func:`load_pretrained`, :func:`load_network`)."""
import copy
import inspect
import os.path as osp
from collections import OrderedDict

import torch
from torch.nn.parallel import DataParallel, DistributedDataParallel

from basicsr.utils.registry import ARCH_REGISTRY

_AUTO_PARAM_KEYS = ('params_ema', 'params')


def _select_state_dict(checkpoint, param_key, path):
    """Pick the state dict out of a loaded checkpoint (see :func:`load_pretrained` for ``param_key``)."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f'Checkpoint "{path}" holds a {type(checkpoint).__name__}, not a state dict.')
    if param_key == 'auto':
        for key in _AUTO_PARAM_KEYS:
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        return checkpoint
    if param_key is None:
        return checkpoint
    if param_key not in checkpoint:
        raise ValueError(f'Checkpoint "{path}" has no key "{param_key}"; its top-level keys are {list(checkpoint)}.')
    return checkpoint[param_key]


def load_pretrained(net, path, param_key='auto', strict=True):
    """Load pretrained weights from a file into ``net``.

    The file is read with ``torch.load(path, map_location='cpu', weights_only=True)``. A leading ``module.`` (saved
    from nn.DataParallel / DistributedDataParallel) is stripped from every key; architectures may rename further
    keys in their own load_state_dict pre-hooks (e.g. :class:`basicsr_distill.archs.imdn_arch.IMDN`).

    Args:
        net (nn.Module): Network to load into (may be wrapped in DataParallel / DistributedDataParallel).
        path (str): Checkpoint file.
        param_key (str | None): Which entry of the checkpoint holds the state dict. ``'auto'`` picks ``'params_ema'``,
            then ``'params'`` (BasicSR checkpoints), then the whole dict (raw state dicts). None uses the whole dict.
            Any other string must be a top-level key. Default: ``'auto'``.
        strict (bool): Require the keys to match exactly, as in ``nn.Module.load_state_dict``. Default: True.

    Returns:
        nn.Module: ``net``, with the weights loaded.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a dict, or ``param_key`` is not in it.
        RuntimeError: If the keys do not fit ``net`` (missing or unexpected keys with ``strict=True``, or shape
            mismatches). The message names the file and lists the missing and unexpected keys. Parameters whose
            keys did fit may already have been copied into ``net`` at that point.
    """
    path = str(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'Pretrained weights not found: "{path}".')
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    state_dict = _select_state_dict(checkpoint, param_key, path)
    state_dict = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state_dict.items())

    bare_net = net.module if isinstance(net, (DataParallel, DistributedDataParallel)) else net
    try:
        bare_net.load_state_dict(state_dict, strict=strict)
    except RuntimeError as err:
        raise RuntimeError(f'Cannot load "{path}" into {type(bare_net).__name__} (strict={strict}): {err}') from err
    return net


def build_network(network_opt, scale=None):
    """Build an SR network from a BasicSR ``network_g``-style dict: ``{'type': name, **constructor options}``.

    Args:
        network_opt (dict): ``type`` is a name in BasicSR's ``ARCH_REGISTRY``; the rest goes to the constructor
            (``network_opt`` itself is not modified).
        scale (int | None): When given and the constructor takes ``upscale`` (BasicSR's name) without it being set,
            it is set to ``scale``. Default: None.

    Returns:
        nn.Module: The network (random weights).

    Raises:
        ValueError: If ``type`` is missing.
        KeyError: If the type is not registered (BasicSR's message).
    """
    opt = copy.deepcopy(dict(network_opt))
    if 'type' not in opt:
        raise ValueError(f'The network options need a "type" (an ARCH_REGISTRY name), got {opt}.')
    arch_cls = ARCH_REGISTRY.get(opt.pop('type'))
    if scale is not None and 'upscale' in inspect.signature(arch_cls).parameters:
        opt.setdefault('upscale', scale)
    return arch_cls(**opt)


def load_network(network_opt, weights, scale=None, param_key='auto', strict=True):
    """:func:`build_network` then :func:`load_pretrained` (strict by default).

    Args:
        network_opt (dict): See :func:`build_network`.
        weights (str): Checkpoint file.
        scale (int | None): See :func:`build_network`. Default: None.
        param_key (str | None): See :func:`load_pretrained`. Default: ``'auto'``.
        strict (bool): See :func:`load_pretrained`. Default: True.

    Returns:
        nn.Module: The network with the weights loaded (in training mode, on the CPU).

    Raises:
        ValueError, KeyError: As :func:`build_network` (no or unknown ``type``).
        FileNotFoundError, ValueError, RuntimeError: As :func:`load_pretrained` (missing file, wrong keys).
    """
    return load_pretrained(build_network(network_opt, scale), weights, param_key=param_key, strict=strict)

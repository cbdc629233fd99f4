"""The one place that builds networks from option dicts and loads pretrained weights (:func:`build_network`,
:func:`load_pretrained`, :func:`load_network`), and the one reader of ``.pth`` files (:func:`read_checkpoint`).
"""
import copy
import errno
import inspect
import io
import os.path as osp
import pickletools
import re
import torch
import zipfile
from collections import OrderedDict
from torch.nn.parallel import DataParallel, DistributedDataParallel

from basicsr.utils.registry import ARCH_REGISTRY

_AUTO_PARAM_KEYS = ('params_ema', 'params')
_ANSI = re.compile(r'\x1b\[[0-9;]*m')


def _load_error_detail(err):
    """Exception type and first line of ``torch.load``'s error, without its advice to turn ``weights_only`` off."""
    text = _ANSI.sub('', str(err))
    if 'weights_only' in text:
        blocked = re.search(r'unsupported GLOBAL [^\n]*', text)  # 'Trying to load unsupported GLOBAL posix.system ...'
        _, _, text = text.partition('WeightsUnpickler error:')
        text = text or (blocked.group(0) if blocked else '')
        text = re.split(r'\. Please use|Check the documentation', text)[0]  # drop torch's advice
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines and 'weights_only' not in lines[0] else ''
    if len(text) > 200:
        text = text[:200] + '...'
    return f'{type(err).__name__}: {text}' if text else type(err).__name__


_STRING_OPS = ('STRING', 'BINSTRING', 'SHORT_BINSTRING', 'UNICODE', 'BINUNICODE', 'SHORT_BINUNICODE', 'BINUNICODE8')
_SCAN_LIMIT = 256 << 20  # bytes of a non-zip file scanned for its pickles


def _allowed_globals():
    """``'module.name'`` of what torch's weights-only reader accepts (its default list and the safe globals added)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError):  # another torch: judge by module below
        allowed = set()
    for obj in torch.serialization.get_safe_globals():
        obj = obj[0] if isinstance(obj, tuple) else obj
        allowed.add(f'{getattr(obj, "__module__", "")}.{getattr(obj, "__qualname__", "")}')
    return allowed


def pickled_globals(path):
    """What a ``.pth`` file's pickles would import beyond plain weights, read with :mod:`pickletools` (nothing run).

    Args:
        path (str): The file (a zip checkpoint's ``data.pkl``, or pickles at the start of any other file).

    Returns:
        list[str] | None: ``'module.name'`` of every referenced global torch's weights-only reader refuses, in order,
        without duplicates (empty: none); None when the file holds no complete pickle.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n == 'data.pkl' or n.endswith('/data.pkl')]
                data, count = (archive.read(names[0]), 1) if names else (b'', 0)
        else:
            with open(path, 'rb') as f:
                data, count = f.read(_SCAN_LIMIT), 4  # a legacy file: magic number, protocol, sys info, objects
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError):
        return None
    stream, found = io.BytesIO(data), []
    for index in range(count):
        recent, memo = [], {}  # strings pushed (None: another object), and those memoised, for STACK_GLOBAL
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ('GLOBAL', 'INST'):
                    found.append(arg.replace(' ', '.'))
                elif op.name == 'STACK_GLOBAL':
                    module, name = ([None, None] + recent)[-2:]
                    found.append(f'{module}.{name}' if module and name else '<unknown>')
                elif op.name == 'MEMOIZE':
                    memo[len(memo)] = recent[-1] if recent else None
                elif op.name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
                    memo[arg] = recent[-1] if recent else None
                else:
                    recent.append(arg if op.name in _STRING_OPS else memo.get(arg) if 'GET' in op.name else None)
                    del recent[:-2]
        except Exception:  # not a pickle, or cut short: a corrupt file, or the raw bytes after a legacy file's pickles
            if index == 0:
                return None
            break
        if stream.tell() >= len(data):
            break
    allowed = _allowed_globals()
    odd = []
    for name in found:
        plain = name in allowed if allowed else name.split('.')[0] in ('torch', 'collections')
        if not plain and name not in odd:
            odd.append(name)
    return odd


def unreadable_checkpoint_error(path, what, err):
    """The ``ValueError`` for a failed ``torch.load(path, weights_only=True)`` (to chain to ``err``).

    Args:
        path (str): The file.
        what (str): What it is, for the message (``'pretrained weights (path.pretrain_network_g)'``).
        err (BaseException): Torch's error.

    Returns:
        ValueError: Naming the file and saying whether it pickles Python objects (refused, never loaded) or is corrupt
        or truncated.
    """
    detail = _load_error_detail(err)
    odd = pickled_globals(path)
    if odd or 'Unsupported global' in detail or 'unsupported GLOBAL' in detail:
        names = ', '.join(odd[:5]) + (f' and {len(odd) - 5} more' if len(odd) > 5 else '') if odd else 'see below'
        return ValueError(f'Refused {what} "{path}": it is not a plain weights file: it holds pickled Python objects '
                          f'({names}) that would be imported and called when it is loaded, which can run any code. '
                          f'It was not loaded and nothing in it was run ({detail}). Use a file that holds only tensors '
                          '(torch.save(net.state_dict(), path)), from a source you trust.')
    return ValueError(f'Cannot read {what} "{path}": the file is corrupt or truncated (not a valid PyTorch '
                      f'checkpoint; {detail}). Download or save it again.')


def read_checkpoint(path, what='checkpoint', map_location='cpu'):
    """Read a ``.pth`` file with ``torch.load(path, map_location=map_location, weights_only=True)``.

    Args:
        path (str): The file (the caller checks it exists, naming its option).
        what (str): What the file is, for the message. Default: ``'checkpoint'``.
        map_location (str | torch.device | callable): As for ``torch.load``. Default: ``'cpu'``.

    Returns:
        object: What the file holds (tensors in plain containers).

    Raises:
        OSError: As ``open`` raises it, or a read error, naming the file.
        ValueError: If the file is corrupt, truncated, empty, not a checkpoint, or pickles objects that
            ``weights_only=True`` refuses (:func:`unreadable_checkpoint_error`, chained to torch's error).
    """
    path = str(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as err:
        if err.filename is not None or err.errno != errno.EINVAL:  # EINVAL: torch's reader of a cut zip archive
            if err.filename is None:
                err.filename = path
            raise
        raise unreadable_checkpoint_error(path, what, err) from err
    except Exception as err:
        raise unreadable_checkpoint_error(path, what, err) from err


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


def check_finite_weights(state_dict, path):
    """Refuse weights holding a NaN or an infinite value (a frozen network would make every later result NaN).

    Non-tensor and integer entries of ``state_dict`` are skipped; ``path`` is the file, for the message.

    Raises:
        ValueError: Naming the file, the first tensor key with a non-finite value and how many values are.
    """
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise ValueError(f'Pretrained weights "{path}": tensor "{key}" holds {bad} non-finite value(s) '
                                 f'(NaN or Inf) of {value.numel()}: the file is damaged or was saved from a diverged '
                                 'training. Refused, nothing was computed; use another checkpoint.')


def load_pretrained(net, path, param_key='auto', strict=True):
    """Load pretrained weights from a file (:func:`read_checkpoint`) into ``net``; a leading ``module.`` is stripped.

    Args:
        net (nn.Module): Network to load into (may be wrapped in DataParallel / DistributedDataParallel).
        path (str): Checkpoint file.
        param_key (str | None): Entry holding the state dict: ``'auto'`` picks ``'params_ema'``, then ``'params'``,
            then the whole dict; None: the whole dict; any other string: that top-level key. Default: ``'auto'``.
        strict (bool): Require the keys to match exactly. Default: True.

    Returns:
        nn.Module: ``net``, with the weights loaded.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is unreadable (:func:`read_checkpoint`), not a dict, lacks ``param_key``, or holds a
            non-finite value (:func:`check_finite_weights`); the file is named.
        RuntimeError: If the keys do not fit ``net`` (named file, missing and unexpected keys listed); weights whose
            keys fit may already be copied.
    """
    path = str(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'Pretrained weights not found: "{path}".')
    checkpoint = read_checkpoint(path, 'pretrained weights')
    state_dict = _select_state_dict(checkpoint, param_key, path)
    state_dict = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state_dict.items())
    check_finite_weights(state_dict, path)

    bare_net = net.module if isinstance(net, (DataParallel, DistributedDataParallel)) else net
    try:
        bare_net.load_state_dict(state_dict, strict=strict)
    except RuntimeError as err:
        raise RuntimeError(f'Cannot load "{path}" into {type(bare_net).__name__} (strict={strict}): {err}') from err
    return net


def build_network(network_opt, scale=None):
    """Build an SR network (random weights) from a BasicSR ``network_g``-style dict ``{'type': name, **options}``.

    Args:
        network_opt (dict): ``type`` is a name in ``ARCH_REGISTRY``; the rest goes to the constructor (not modified).
        scale (int | None): Sets ``upscale`` when the constructor takes it and it is not given. Default: None.

    Raises:
        ValueError: If ``type`` is missing.
        KeyError: If the type is not registered.
    """
    opt = copy.deepcopy(dict(network_opt))
    if 'type' not in opt:
        raise ValueError(f'The network options need a "type" (an ARCH_REGISTRY name), got {opt}.')
    arch_cls = ARCH_REGISTRY.get(opt.pop('type'))
    if scale is not None and 'upscale' in inspect.signature(arch_cls).parameters:
        opt.setdefault('upscale', scale)
    return arch_cls(**opt)


def load_network(network_opt, weights, scale=None, param_key='auto', strict=True):
    """:func:`build_network` then :func:`load_pretrained` of the checkpoint file ``weights``; train mode, on the CPU.

    Raises:
        ValueError, KeyError: As :func:`build_network`.
        FileNotFoundError, ValueError, RuntimeError: As :func:`load_pretrained`.
    """
    return load_pretrained(build_network(network_opt, scale), weights, param_key=param_key, strict=strict)


def load_frozen_network(opt, key, device):
    """``opt['network_<key>']`` (``key``: ``'t'``, ``'up'``, ``'g'``, ``'f'``) with the weights of
    ``opt['path']['pretrain_network_<key>']`` (``param_key_<key>``, ``strict_load_<key>`` as BasicSR), on ``device``,
    frozen, in eval mode. Callers check first that both options are given.

    Raises:
        KeyError, FileNotFoundError, ValueError, RuntimeError: As :func:`load_network`.
    """
    path_opt = opt['path']
    net = load_network(
        opt[f'network_{key}'],
        path_opt[f'pretrain_network_{key}'],
        param_key=path_opt.get(f'param_key_{key}', 'auto'),
        strict=path_opt.get(f'strict_load_{key}', True))
    net = net.to(device).eval()
    net.requires_grad_(False)
    return net

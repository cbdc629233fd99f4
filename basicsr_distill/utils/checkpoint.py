"""Building networks from option dicts and loading pretrained weights into them, with clear errors: the one place
of the package that does either (:func:`build_network`, :func:`load_pretrained`, :func:`load_network`), and the one
reader of ``.pth`` files (:func:`read_checkpoint`)."""
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
    """A short, safe description of why ``torch.load`` failed: the exception type and the first line of its message.

    Torch's weights-only message advises re-running with ``weights_only`` off, which is wrong for a corrupt file and
    unsafe for a foreign one: only its ``WeightsUnpickler error:`` line is kept, or none of it.
    """
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
    """What a pickle-based ``.pth`` file would import when unpickled, besides what a plain weights file holds.

    The pickle opcodes are read with :mod:`pickletools` (nothing is imported or run): the ``data.pkl`` of a zip
    checkpoint, or the pickles at the start of any other file (a legacy ``torch.save`` file, a ``pickle.dump``).

    Args:
        path (str): The file.

    Returns:
        list[str] | None: ``'module.name'`` of every class or function it references that torch's weights-only
        reader does not accept (``'posix.system'``, ``'argparse.Namespace'``), in order, without duplicates (empty:
        none); None when the file holds no complete pickle (corrupt, truncated, not a pickle at all).
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
    """The error to raise when ``torch.load(path, weights_only=True)`` failed with ``err``.

    Args:
        path (str): The file.
        what (str): What it is, for the message (``'pretrained weights (path.pretrain_network_g)'``).
        err (BaseException): Torch's error (the new error is meant to be chained to it).

    Returns:
        ValueError: Naming the file and saying what it is: not a plain weights file (it pickles Python objects whose
        loading can run code: refused, never loaded), or corrupt or truncated. Torch's advice to retry with
        ``weights_only`` turned off is not repeated: it does not help a corrupt file and runs arbitrary code from a
        foreign one.
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

    Any failure of ``torch.load`` to parse the file (``UnpicklingError``, ``RuntimeError``, ``EOFError``,
    ``zipfile`` errors, the ``OSError: [Errno 22]`` of a truncated zip archive, ...) is re-raised as a ``ValueError``
    that names the file and says what it is (:func:`unreadable_checkpoint_error`): not a plain weights file (it
    pickles Python objects, refused and never loaded), or corrupt or truncated; chained to torch's error.

    Args:
        path (str): The file (its existence is checked by the caller, which knows the option it came from).
        what (str): What the file is, for the message (``'pretrained weights'``, ``'training state'``).
            Default: ``'checkpoint'``.
        map_location (str | torch.device | callable): As for ``torch.load``. Default: ``'cpu'``.

    Returns:
        object: What the file holds (tensors in plain containers).

    Raises:
        FileNotFoundError, PermissionError, IsADirectoryError (OSError): As ``open`` raises them (they name the file);
            a read error (``EIO``) is raised naming the file too.
        ValueError: If the file is not a valid PyTorch checkpoint (corrupt, truncated, empty, not a checkpoint at
            all, or pickling objects that ``weights_only=True`` refuses).
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
    """Refuse weights holding a NaN or an infinite value: a frozen teacher or generator would turn every feature,
    loss and distilled pair into NaN, which fails far from its cause (e.g. in scikit-learn's k-means).

    Args:
        state_dict (Mapping[str, object]): The weights (non-tensor and integer entries are skipped).
        path (str): The file they were read from, for the message.

    Raises:
        ValueError: Naming the file and the first tensor key with a non-finite value (and how many values are).
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
    """Load pretrained weights from a file into ``net``.

    The file is read with :func:`read_checkpoint` (``torch.load(path, map_location='cpu', weights_only=True)``,
    errors naming the file). A leading ``module.`` (saved
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
        ValueError: If the file is corrupt or truncated (not a valid PyTorch checkpoint, see
            :func:`read_checkpoint`), is not a dict, ``param_key`` is not in it, or a tensor holds a NaN or an
            infinite value (:func:`check_finite_weights`: the file and the tensor key are named).
        RuntimeError: If the keys do not fit ``net`` (missing or unexpected keys with ``strict=True``, or shape
            mismatches). The message names the file and lists the missing and unexpected keys. Parameters whose
            keys did fit may already have been copied into ``net`` at that point.
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
        FileNotFoundError, ValueError, RuntimeError: As :func:`load_pretrained` (missing, corrupt or truncated
            file, wrong keys).
    """
    return load_pretrained(build_network(network_opt, scale), weights, param_key=param_key, strict=strict)


def load_frozen_network(opt, key, device):
    """``opt['network_<key>']`` with the weights of ``opt['path']['pretrain_network_<key>']`` (``param_key_<key>``,
    ``strict_load_<key>`` as BasicSR names them), on ``device``, in eval mode, without gradients: the teachers,
    up-samplers and generators of the distillation models and the selection baselines.

    Args:
        opt (dict): Whole options; ``network_<key>`` and ``path.pretrain_network_<key>`` must be given (callers check
            them first, with a message that fits their command).
        key (str): The option suffix (``'t'``, ``'up'``, ``'g'``, ``'f'``).
        device (torch.device | str): Where the network goes.

    Returns:
        nn.Module: The frozen network.

    Raises:
        KeyError, FileNotFoundError, ValueError, RuntimeError: As :func:`load_network` (unknown type; missing,
            corrupt or truncated file; wrong keys).
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

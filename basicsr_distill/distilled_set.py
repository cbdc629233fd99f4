"""The on-disk format of a distilled super-resolution dataset (the only module that knows it).

Every method of the project (IDC, GSDD, Minimax diffusion, coreset baselines) writes its result through
:class:`DistilledSetWriter`, and every reader (:class:`basicsr_distill.data.DistilledPairedDataset`, the lmdb
converter, evaluation scripts) goes through the functions of this module.

Layout of a distilled set ``root/``::

    root/
    ├── hr/<name>.png          8-bit RGB PNG, shape (scale*h, scale*w, 3)
    ├── lr/<name>.png          8-bit RGB PNG, shape (h, w, 3)
    ├── lr_float/<name>.npy    float32 RGB [0, 1] copy of the LR, shape (h, w, 3) (lossless; PNG quantises)
    ├── meta_info.txt          one line ``<name>.png (H,W,3)`` (HR shape) per pair, readable by BasicSR's
    │                          PairedImageDataset (dataroot_gt=root/hr, dataroot_lq=root/lr, filename_tmpl='{}')
    ├── distill.json           the manifest (see below)
    ├── distill.rank<k>.json   only while a multi-process run is unfinished: rank k's shard (see below)
    ├── hr.lmdb/, lr.lmdb/     optional, written by :func:`make_distilled_lmdb` (keys = pair names)

Manifest fields (``distill.json``): ``format`` (``'basicsr_distill.distilled_set'``), ``format_version``,
``method``, ``scale``, ``lr_for_training`` (``'lr_float'``: the LR copy DistilledPairedDataset reads by default;
BasicSR's PairedImageDataset reads the PNGs), ``source`` (dict: folder, num_images, ...), ``size_control``
(e.g. ``{'r': 0.1}`` or ``{'ipc': 10}``), ``complete``, ``num_pairs``, ``units_finished`` (unit ids as str),
``wall_time_s`` (accumulated over restarts), ``created``, ``updated`` (local ISO 8601 timestamps), ``versions``,
``options_hash``, ``options`` (JSON-safe copy of the full option dict), ``world_size`` (processes of the run that
wrote it last; absent in sets written before multi-process runs existed), ``pairs`` (list of
``{'name', 'unit', 'hr_shape', 'lr_shape', **info}``), plus whatever :meth:`DistilledSetWriter.finalize` merges.
With ``unit_order`` the writer lists ``units_finished`` and ``pairs`` in that order of units, whatever order the units
were written in.

Crash safety: every file is written under a temporary name (``.distill-tmp-*``) in its final folder, flushed,
fsync'ed and moved into place with ``os.replace``, so a file with a final name is never half written. The manifest
is the commit record: a unit counts only once ``distill.json`` lists it; ``meta_info.txt`` is derived from the
manifest and rewritten right after it (and again whenever a writer opens the folder). Only one writer may work on a
folder at a time (there is no inter-process lock), except for the shards below.

Multi-process runs (``torchrun ... --launcher pytorch``): rank 0 opens the folder first with the ordinary writer
(``shard=None``; it creates or resumes ``distill.json`` and merges the shards an interrupted run left), then every
rank k >= 1 opens it with ``shard=k``: it reads ``distill.json`` (never writes it), writes its units' pair files as
above and commits each unit to its own shard ``distill.rank<k>.json`` (same pair entries as the manifest, replaced
atomically). A unit counts once ``distill.json`` *or* a shard lists it. At the end rank 0 calls
:meth:`DistilledSetWriter.merge_shards` (after a barrier): the shards' units go into ``distill.json`` (in unit order
with ``unit_order``), which is replaced atomically, and the shards are deleted; a crash between the two only makes the
next merge repeat the same replacement. So no two processes ever write the same file.
"""
import copy
import hashlib
import io
import json
import math
import os
import platform
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from os import path as osp

import cv2
import numpy as np

from basicsr.utils import get_root_logger, imfrombytes
from basicsr_distill.version import __version__

FORMAT_NAME = 'basicsr_distill.distilled_set'
FORMAT_VERSION = 1
MANIFEST_NAME = 'distill.json'
META_INFO_NAME = 'meta_info.txt'
HR_DIR = 'hr'
LR_DIR = 'lr'
LR_FLOAT_DIR = 'lr_float'
HR_LMDB = 'hr.lmdb'
LR_LMDB = 'lr.lmdb'
LMDB_SOURCE_NAME = 'distill_source.json'
LR_FOR_TRAINING = 'lr_float'
SHARD_FORMAT_NAME = 'basicsr_distill.distilled_set.shard'
_SHARD_RE = re.compile(r'^distill\.rank([1-9][0-9]*)\.json$')

# Top-level option keys left out of ``options_hash``: run bookkeeping that may change between a run and its
# restart without changing what is distilled (BasicSR draws a new ``manual_seed`` at every start when none is set;
# finished units are self-contained, so a restart with another seed is still a valid continuation).
HASH_IGNORED_KEYS = frozenset({
    'path', 'auto_resume', 'dist', 'rank', 'world_size', 'num_gpu', 'is_train', 'root_path', 'manual_seed', 'logger',
    'debug', 'launcher', 'force_yml', 'name'
})

# Fields of a pair entry that ``info`` may not override.
_PAIR_RESERVED = frozenset({'name', 'unit', 'hr_shape', 'lr_shape'})
# Manifest fields that ``finalize(extra)`` may not override.
_MANIFEST_RESERVED = frozenset({
    'format', 'format_version', 'method', 'scale', 'lr_for_training', 'size_control', 'complete', 'num_pairs',
    'units_finished', 'wall_time_s', 'created', 'updated', 'versions', 'options_hash', 'options', 'pairs',
    'world_size'
})
_REQUIRED_FIELDS = {
    'format_version': int,
    'method': str,
    'scale': int,
    'size_control': dict,
    'options_hash': str,
    'units_finished': list,
    'pairs': list,
    'complete': bool,
}
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$')
_FORBIDDEN_NAME_SUFFIXES = ('.png', '.npy', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
_TMP_PREFIX = '.distill-tmp-'


# ----------------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------------
def to_jsonable(obj):
    """Return a JSON-safe copy of ``obj`` (used for options, info and manifest extras).

    Mappings become dicts with str keys, tuples/lists/sets become lists, numpy/torch scalars and arrays become
    Python numbers/lists, path-like objects become str, non-finite floats become the strings ``'nan'``, ``'inf'``,
    ``'-inf'``; anything else becomes ``str(obj)``.

    Args:
        obj (object): Any object.

    Returns:
        object: Made of dict, list, str, int, float, bool and None only.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else str(obj)
    if isinstance(obj, (np.generic, np.ndarray)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, 'tolist') and callable(obj.tolist):  # torch tensors
        return to_jsonable(obj.tolist())
    return str(obj)


def options_hash(options):
    """SHA-256 of the JSON-safe options, top-level keys in :data:`HASH_IGNORED_KEYS` left out.

    Args:
        options (Mapping | None): Option dict.

    Returns:
        str: 64 hex digits.
    """
    safe = to_jsonable(dict(options or {}))
    safe = {k: v for k, v in safe.items() if k not in HASH_IGNORED_KEYS}
    text = json.dumps(safe, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


def _diff_paths(old, new, prefix='', limit=8):
    """Dotted paths where two JSON-safe trees differ (at most ``limit``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            if not prefix and key in HASH_IGNORED_KEYS:
                continue
            if key not in old or key not in new:
                out.append(f'{prefix}{key}')
            elif old[key] != new[key]:
                out.extend(_diff_paths(old[key], new[key], f'{prefix}{key}.', limit))
            if len(out) >= limit:
                break
        return out[:limit]
    return [prefix.rstrip('.') or '<root>'] if old != new else []


def _now():
    return datetime.now().astimezone().isoformat(timespec='seconds')


@lru_cache(maxsize=1)
def collect_versions():
    """Versions of the software that writes a distilled set (fast, offline, imports nothing new).

    We do not use mmengine's ``collect_env``: it shells out to gcc/nvcc, initialises CUDA on GPU machines and
    records a multi-kilobyte build string.

    Returns:
        dict: python, platform, torch, cuda, torchvision, basicsr, basicsr_distill, numpy, cv2.
    """
    from importlib import metadata

    import torch

    def _dist_version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        'python': platform.python_version(),
        'platform': platform.platform(),
        'torch': torch.__version__,
        'cuda': torch.version.cuda,
        'torchvision': _dist_version('torchvision'),
        'basicsr': _dist_version('basicsr'),
        'basicsr_distill': __version__,
        'numpy': np.__version__,
        'cv2': cv2.__version__,
    }


def _tmp_path(final_path):
    """Temporary path next to ``final_path`` (same folder, so ``os.replace`` is atomic)."""
    folder, base = osp.split(final_path)
    return osp.join(folder, f'{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{base}')


def _write_bytes_atomic(path, data):
    """Write ``data`` to ``path`` through a fsync'ed temporary file and ``os.replace``.

    Raises:
        OSError: When writing or replacing fails; the temporary file is removed and ``path`` is untouched.
    """
    tmp = _tmp_path(path)
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.lexists(tmp):
            os.remove(tmp)
        raise


def _write_json_atomic(path, obj):
    """Write a JSON dict atomically; a ``pairs`` list is written last, one compact line per pair."""
    head = {k: v for k, v in obj.items() if k != 'pairs'}
    text = json.dumps(head, indent=2, ensure_ascii=False, allow_nan=False)
    if 'pairs' in obj:
        lines = ',\n'.join(f'    {json.dumps(p, ensure_ascii=False, allow_nan=False)}' for p in obj['pairs'])
        pairs = f'[\n{lines}\n  ]' if lines else '[]'
        text = f'{text[:-2]},\n  "pairs": {pairs}\n}}' if head else f'{{\n  "pairs": {pairs}\n}}'
    _write_bytes_atomic(path, (text + '\n').encode('utf-8'))


def _encode_png(img_rgb_u8, what):
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(img_rgb_u8[..., ::-1]))
    if not ok:
        raise IOError(f'Failed to encode {what} as PNG.')
    return buf.tobytes()


def _encode_npy(arr):
    bio = io.BytesIO()
    np.save(bio, arr, allow_pickle=False)
    return bio.getvalue()


def _to_uint8(img):
    return np.round(img * 255.).astype(np.uint8)


def pair_paths(root, name):
    """Paths of the files of one pair.

    Args:
        root (str): Distilled-set folder.
        name (str): Pair name (no extension).

    Returns:
        dict: ``{'hr': root/hr/<name>.png, 'lr': root/lr/<name>.png, 'lr_float': root/lr_float/<name>.npy}``.
    """
    return {
        'hr': osp.join(root, HR_DIR, f'{name}.png'),
        'lr': osp.join(root, LR_DIR, f'{name}.png'),
        'lr_float': osp.join(root, LR_FLOAT_DIR, f'{name}.npy'),
    }


def lmdb_paths(root):
    """Paths of the optional lmdb copies: ``{'hr': root/hr.lmdb, 'lr': root/lr.lmdb}``."""
    return {'hr': osp.join(root, HR_LMDB), 'lr': osp.join(root, LR_LMDB)}


def meta_info_text(pairs):
    """Text of ``meta_info.txt`` for a list of manifest pair entries (one ``<name>.png (H,W,C)`` line each)."""
    lines = [f'{p["name"]}.png ({",".join(str(int(v)) for v in p["hr_shape"])})' for p in pairs]
    return ''.join(f'{line}\n' for line in lines)


def write_meta_info(root):
    """Regenerate ``root/meta_info.txt`` from the manifest (atomically).

    Use it after an interruption between the manifest and the meta-info update (``validate_distilled_set`` says
    so); opening the folder with :class:`DistilledSetWriter` does it too.

    Args:
        root (str): Distilled-set folder.

    Returns:
        str: Path of ``meta_info.txt``.
    """
    manifest = read_manifest(root)
    path = osp.join(root, META_INFO_NAME)
    _write_bytes_atomic(path, meta_info_text(manifest['pairs']).encode('utf-8'))
    return path


def _read_meta_info_names(path):
    with open(path, 'r') as f:
        entries = [line.strip().split(' ')[0] for line in f if line.strip()]
    return [osp.splitext(v)[0] for v in entries]


def _check_name(name):
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.lower().endswith(_FORBIDDEN_NAME_SUFFIXES):
        raise ValueError(f'Invalid pair name {name!r}: use 1-200 ASCII letters, digits, "_", "-", "." (not first), '
                         'no file extension (it is also the lmdb key and a meta_info.txt entry).')


def _unit_id(unit):
    """Unit ids are stored as str (JSON keeps them exactly); ints are accepted and converted."""
    if isinstance(unit, bool) or not isinstance(unit, (str, int, np.integer)):
        raise TypeError(f'A unit id must be a str or an int, got {type(unit).__name__}: {unit!r}.')
    uid = str(int(unit)) if not isinstance(unit, str) else unit
    if not uid:
        raise ValueError('A unit id must not be empty.')
    return uid


# ----------------------------------------------------------------------------------------------------------------
# reading and validation
# ----------------------------------------------------------------------------------------------------------------
def _load_json(path):
    """The parsed JSON file ``path``; ``ValueError`` naming the file when it is not valid JSON (UTF-8)."""
    try:
        with open(path, 'r', encoding='utf-8') as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f'{path} is not valid JSON ({err}).') from err


def read_manifest(root):
    """Read and sanity-check ``root/distill.json``.

    Args:
        root (str): Distilled-set folder.

    Returns:
        dict: The manifest.

    Raises:
        FileNotFoundError: When ``root/distill.json`` does not exist (message names it).
        ValueError: When it is not valid JSON, not a distilled-set manifest, written by a newer format version, or
            misses a required field (message names the file).
    """
    path = osp.join(root, MANIFEST_NAME)
    if not osp.isfile(path):
        raise FileNotFoundError(f'No distilled-set manifest {path}: {root} is not a distilled set '
                                '(written by basicsr_distill.distilled_set.DistilledSetWriter).')
    manifest = _load_json(path)
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT_NAME:
        raise ValueError(f'{path} is not a distilled-set manifest (expected "format": "{FORMAT_NAME}").')
    for key, typ in _REQUIRED_FIELDS.items():
        if key not in manifest:
            raise ValueError(f'{path} misses the field {key!r}.')
        if not isinstance(manifest[key], typ) or (typ is int and isinstance(manifest[key], bool)):
            raise ValueError(f'{path}: field {key!r} must be {typ.__name__}, got {manifest[key]!r}.')
    if manifest['format_version'] > FORMAT_VERSION:
        raise ValueError(f'{path} has format_version {manifest["format_version"]}, newer than the one this '
                         f'basicsr_distill ({__version__}) reads ({FORMAT_VERSION}); update basicsr_distill.')
    return manifest


def _check_manifest_consistency(manifest, manifest_path):
    if manifest.get('num_pairs', len(manifest['pairs'])) != len(manifest['pairs']):
        raise ValueError(f'{manifest_path}: num_pairs is {manifest["num_pairs"]} but {len(manifest["pairs"])} pairs '
                         'are listed.')
    finished = set(manifest['units_finished'])
    seen = set()
    for i, pair in enumerate(manifest['pairs']):
        if not isinstance(pair, dict) or not all(k in pair for k in _PAIR_RESERVED):
            raise ValueError(f'{manifest_path}: pair #{i} must be a dict with keys {sorted(_PAIR_RESERVED)}.')
        name = pair['name']
        if name in seen:
            raise ValueError(f'{manifest_path}: pair name {name!r} is listed twice.')
        seen.add(name)
        if pair['unit'] not in finished:
            raise ValueError(f'{manifest_path}: pair {name!r} belongs to unit {pair["unit"]!r}, which is not in '
                             'units_finished.')


def shard_path(root, rank):
    """Path of rank ``rank``'s shard of a multi-process run: ``root/distill.rank<rank>.json`` (rank >= 1)."""
    return osp.join(root, f'distill.rank{int(rank)}.json')


def pending_shards(root):
    """Shards an unfinished multi-process run left in ``root`` (not merged into ``distill.json`` yet).

    Args:
        root (str): Distilled-set folder.

    Returns:
        list[tuple[int, str]]: ``(rank, path)`` by rank; empty when there is none (or no folder).
    """
    if not osp.isdir(root):
        return []
    found = []
    for entry in os.listdir(root):
        match = _SHARD_RE.match(entry)
        if match:
            found.append((int(match.group(1)), osp.join(root, entry)))
    return sorted(found)


def read_shard(path):
    """Read and sanity-check one rank's shard (see the module docstring).

    Args:
        path (str): A ``distill.rank<k>.json`` file.

    Returns:
        dict: ``format``, ``rank``, ``method``, ``scale``, ``size_control``, ``options_hash``, ``units_finished``,
        ``pairs`` (manifest pair entries).

    Raises:
        ValueError: When it is not valid JSON, not a shard, misses a field or lists a pair of an unlisted unit (the
            message names the file).
    """
    shard = _load_json(path)
    if not isinstance(shard, dict) or shard.get('format') != SHARD_FORMAT_NAME:
        raise ValueError(f'{path} is not a shard of a distilled set (expected "format": "{SHARD_FORMAT_NAME}").')
    for key, typ in (('rank', int), ('method', str), ('scale', int), ('size_control', dict), ('options_hash', str),
                     ('units_finished', list), ('pairs', list)):
        if not isinstance(shard.get(key), typ) or isinstance(shard.get(key), bool):
            raise ValueError(f'{path}: field {key!r} must be {typ.__name__}, got {shard.get(key)!r}.')
    units = set(shard['units_finished'])
    for i, pair in enumerate(shard['pairs']):
        if not isinstance(pair, dict) or not all(k in pair for k in _PAIR_RESERVED) or pair['unit'] not in units:
            raise ValueError(f'{path}: pair #{i} must be a dict with keys {sorted(_PAIR_RESERVED)} of a unit listed '
                             'in units_finished.')
    return shard


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_IEND = b'\x00\x00\x00\x00IEND\xaeB`\x82'


def _pair_file_problem(path, kind, shape):
    """Why a pair file is broken, from its first and last bytes only (no decoding), or None.

    PNG files (``hr``, ``lr``) must start with the PNG signature and an IHDR chunk of the expected size and end with
    the IEND chunk (the writer's encoder always ends there); the npy file (``lr_float``) must hold a float (H, W, 3)
    array of the expected shape whose data fills the file exactly. This finds truncated files, files of another
    format and files replaced by images of another size.

    Args:
        path (str): The file.
        kind (str): ``'hr'``, ``'lr'`` or ``'lr_float'``.
        shape (list[int]): The (H, W, 3) shape the manifest records.

    Returns:
        str | None: The problem, or None.
    """
    size = osp.getsize(path)
    with open(path, 'rb') as f:
        if kind != 'lr_float':
            head = f.read(24)
            if size < 24 + len(_PNG_IEND) or head[:8] != _PNG_SIGNATURE or head[12:16] != b'IHDR':
                return 'is not a PNG file'
            w, h = int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')
            if [h, w] != [int(v) for v in shape[:2]]:
                return f'is {h}x{w} pixels, the manifest says {shape[0]}x{shape[1]}'
            f.seek(size - len(_PNG_IEND))
            if f.read(len(_PNG_IEND)) != _PNG_IEND:
                return 'is truncated (no IEND chunk at its end)'
            return None
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                return f'is an npy file of version {version}, not 1.0 or 2.0'
            arr_shape, _, dtype = read_header[version](f)
        except (ValueError, OSError, EOFError) as err:
            return f'is not a readable npy file ({err})'
        if len(arr_shape) != 3 or arr_shape[2] != 3 or dtype.kind != 'f' or dtype.hasobject:
            return f'must hold a float (H, W, 3) array, holds {dtype} {arr_shape}'
        if list(arr_shape) != [int(v) for v in shape]:
            return f'holds an array of shape {arr_shape}, the manifest says {tuple(shape)}'
        if f.tell() + int(np.prod(arr_shape)) * dtype.itemsize != size:
            return f'has {size} bytes, not the {f.tell() + int(np.prod(arr_shape)) * dtype.itemsize} its header says'
    return None


def validate_distilled_set(root, scale=None, require_complete=False, check_files=True, check_contents=False):
    """Check that ``root`` is a usable distilled set.

    Checks the manifest (see :func:`read_manifest`), the scale, completeness (optional), that every listed pair has
    its ``hr/`` and ``lr/`` PNG and its ``lr_float/`` npy file, and that ``meta_info.txt`` lists the same names.
    Pixels are not decoded (the dataset checks a pair when it loads it); with ``check_contents`` the first and
    last bytes of every file are read to find truncated files, files of another format and sizes other than the
    manifest's (cheap: no decoding).

    Args:
        root (str): Distilled-set folder.
        scale (int | None): Expected upscaling factor; None skips the check. Default: None.
        require_complete (bool): Require ``complete: true`` (a finalized run). Default: False.
        check_files (bool): Check the pair files and meta_info.txt (an lmdb-only reader sets False). Default: True.
        check_contents (bool): Also check the headers, sizes and ends of the pair files (see above). Default: False.

    Returns:
        dict: The manifest.

    Raises:
        FileNotFoundError: When the manifest is missing.
        ValueError: Invalid manifest, scale mismatch (names distill.json and both scales), incomplete set while
            ``require_complete``, the first missing pair file (named), meta_info.txt out of sync (named), or with
            ``check_contents`` the first broken pair file (named).
    """
    manifest = read_manifest(root)
    manifest_path = osp.join(root, MANIFEST_NAME)
    if scale is not None and int(scale) != manifest['scale']:
        raise ValueError(f'{manifest_path} was distilled for scale x{manifest["scale"]}, but scale x{int(scale)} is '
                         'requested (check the "scale" of your option file or pick the set for that scale).')
    if require_complete and not manifest['complete']:
        shards = pending_shards(root)
        more = (f' ({len(shards)} shard(s) of a multi-process run, e.g. {shards[0][1]}, are not merged yet)'
                if shards else '')
        raise ValueError(f'{manifest_path} is not complete (the distillation run was interrupted or not finalized)'
                         f'{more}; resume the run to finish it.')
    _check_manifest_consistency(manifest, manifest_path)
    if not check_files:
        return manifest
    for pair in manifest['pairs']:
        for kind, path in pair_paths(root, pair['name']).items():
            if not osp.isfile(path):
                raise ValueError(f'Distilled set {root}: the {kind} file {path} of pair {pair["name"]!r} listed in '
                                 f'{manifest_path} is missing.')
            shape = pair['hr_shape' if kind == 'hr' else 'lr_shape']
            problem = _pair_file_problem(path, kind, shape) if check_contents else None
            if problem:
                raise ValueError(f'Distilled set {root}: the {kind} file {path} of pair {pair["name"]!r} {problem}.')
    meta_path = osp.join(root, META_INFO_NAME)
    if not osp.isfile(meta_path):
        raise ValueError(f'Distilled set {root}: {meta_path} is missing; regenerate it with '
                         'basicsr_distill.distilled_set.write_meta_info(root).')
    meta_names = _read_meta_info_names(meta_path)
    names = [p['name'] for p in manifest['pairs']]
    if sorted(meta_names) != sorted(names):
        extra = sorted(set(meta_names) - set(names))
        missing = sorted(set(names) - set(meta_names))
        detail = f'not in the manifest: {extra[:3]}' if extra else (
            f'missing: {missing[:3]}' if missing else 'duplicate entries')
        raise ValueError(f'{meta_path} is out of sync with {manifest_path} ({detail}), probably after an '
                         'interrupted write; regenerate it with basicsr_distill.distilled_set.write_meta_info(root) '
                         'or by reopening the folder with DistilledSetWriter.')
    return manifest


def validate_distilled_lmdb(root, scale=None, require_complete=False):
    """Check a distilled set's ``hr.lmdb``/``lr.lmdb`` copies against its manifest.

    Every pair name must be a key of both databases (checked through the ``meta_info.txt`` that BasicSR's
    ``make_lmdb_from_imgs`` writes into each), with the shapes the manifest records. A warning is logged when the
    lmdb copies were made from an older state of the manifest.

    Args:
        root (str): Distilled-set folder.
        scale (int | None): Expected upscaling factor; None skips the check. Default: None.
        require_complete (bool): Require a finalized set. Default: False.

    Returns:
        dict: The manifest.

    Raises:
        FileNotFoundError: When the manifest or an lmdb folder (or its meta_info.txt) is missing.
        ValueError: As :func:`validate_distilled_set`, or when a pair is missing from an lmdb or has another shape
            there (names the lmdb).
    """
    manifest = validate_distilled_set(root, scale=scale, require_complete=require_complete, check_files=False)
    for kind, db_path in lmdb_paths(root).items():
        meta_path = osp.join(db_path, 'meta_info.txt')
        if not osp.isfile(osp.join(db_path, 'data.mdb')) or not osp.isfile(meta_path):
            raise FileNotFoundError(f'No lmdb {db_path} (with data.mdb and meta_info.txt): create it with '
                                    f'"python scripts/make_distilled_lmdb.py {root}".')
        shapes = {}
        with open(meta_path, 'r') as f:
            for line in f:
                parts = line.strip().split(' ')
                if len(parts) >= 2:
                    shapes[osp.splitext(parts[0])[0]] = parts[1]
        shape_key = 'hr_shape' if kind == 'hr' else 'lr_shape'
        for pair in manifest['pairs']:
            if pair['name'] not in shapes:
                raise ValueError(f'{db_path} has no key {pair["name"]!r} listed in {osp.join(root, MANIFEST_NAME)}; '
                                 'the lmdb is older than the set: remove it and run scripts/make_distilled_lmdb.py.')
            expected = f'({",".join(str(int(v)) for v in pair[shape_key])})'
            if shapes[pair['name']] != expected:
                raise ValueError(f'{db_path}: key {pair["name"]!r} has shape {shapes[pair["name"]]}, the manifest '
                                 f'says {expected}; remove the lmdb and run scripts/make_distilled_lmdb.py again.')
        source_path = osp.join(db_path, LMDB_SOURCE_NAME)
        if osp.isfile(source_path):
            with open(source_path, 'r', encoding='utf-8') as f:
                made_from = json.load(f).get('manifest_updated')
            if made_from != manifest.get('updated'):
                get_root_logger().warning(f'{db_path} was made from the set as of {made_from}, but '
                                          f'{MANIFEST_NAME} was updated at {manifest.get("updated")}; rebuild it if '
                                          'units were rewritten since.')
    return manifest


def load_pair(root, name, lq_source='float'):
    """Load one pair of a distilled set.

    Args:
        root (str): Distilled-set folder.
        name (str): Pair name.
        lq_source (str): ``'float'`` (lr_float/*.npy, exact) or ``'png'`` (lr/*.png, quantised). Default: 'float'.

    Returns:
        tuple[ndarray, ndarray]: ``(lq, gt)``, float32 RGB in [0, 1], shapes (h, w, 3) and (s*h, s*w, 3).

    Raises:
        ValueError: Unknown ``lq_source`` or an unreadable image (named).
        FileNotFoundError: A missing file.
    """
    paths = pair_paths(root, name)
    gt = read_png_rgb(paths['hr'])
    if lq_source == 'float':
        lq = read_npy_rgb(paths['lr_float'])
    elif lq_source == 'png':
        lq = read_png_rgb(paths['lr'])
    else:
        raise ValueError(f"lq_source must be 'float' or 'png', got {lq_source!r}.")
    return lq, gt


def decode_png(content, path):
    """Decode PNG bytes with BasicSR's ``imfrombytes`` to float32 BGR [0, 1] (H, W, 3).

    Raises:
        ValueError: When the bytes are missing or not an image (names ``path``).
    """
    if content is None:
        raise ValueError(f'No data for {path}.')
    img = imfrombytes(content, flag='color', float32=False)
    if img is None:
        raise ValueError(f'{path} is not a readable image.')
    return img.astype(np.float32) / 255.


def decode_npy(content, path):
    """Decode the bytes of an ``lr_float`` npy file to float32 RGB [0, 1] (H, W, 3).

    Raises:
        ValueError: When the content is not an (H, W, 3) float array (names ``path``).
    """
    if content is None:
        raise ValueError(f'No data for {path}.')
    try:
        arr = np.load(io.BytesIO(content), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f'{path} is not a readable npy file ({err}).') from err
    if arr.ndim != 3 or arr.shape[2] != 3 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f'{path} must hold a float (H, W, 3) array, got {arr.dtype} {arr.shape}.')
    return arr.astype(np.float32, copy=False)


def read_png_rgb(path):
    """Read an 8-bit PNG as float32 RGB [0, 1] (H, W, 3)."""
    with open(path, 'rb') as f:
        return np.ascontiguousarray(decode_png(f.read(), path)[..., ::-1])


def read_npy_rgb(path):
    """Read an ``lr_float`` npy file as float32 RGB [0, 1] (H, W, 3)."""
    with open(path, 'rb') as f:
        return decode_npy(f.read(), path)


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------
class DistilledSetWriter():
    """Write a distilled set unit by unit, resumable after a crash.

    A *unit* is the piece of work a method finishes at once (an IDC instance, a GSDD class, a coreset chunk...).
    :meth:`write_unit` stores its pairs and marks it finished; a restarted run asks :meth:`is_finished` and skips
    it. Unit ids are stored as str (``3`` and ``'3'`` are the same unit).

    In a multi-process run (see the module docstring) rank 0 opens the folder first with ``shard=None`` and rank
    k >= 1 afterwards with ``shard=k``; rank 0 merges the shards with :meth:`merge_shards` once every rank is done.

    Args:
        root (str): Output folder (created if needed).
        method (str): Method name, e.g. ``'idc'``.
        scale (int): Upscaling factor (HR size = scale x LR size).
        source (Mapping): Description of the source data, e.g. ``{'folder': ..., 'num_images': 91}``.
        size_control (Mapping): Budget, e.g. ``{'r': 0.1}`` or ``{'ipc': 10}``.
        options (Mapping | None): The full option dict of the run (stored JSON-safe; hashed without
            :data:`HASH_IGNORED_KEYS`).
        resume (bool): Continue a folder that already holds a manifest of the same run. Default: True.
        unit_order (Sequence[str | int] | None): Every unit id in the method's order; the manifest then lists
            ``units_finished`` and ``pairs`` in this order of units (others after them, in write order), whatever
            order the units were written or merged in. None keeps the write order. Default: None.
        world_size (int): Processes of the run (recorded as the manifest's ``world_size``). Default: 1.
        shard (int | None): None for the writer of ``distill.json`` (a single process, or rank 0); k in
            [1, world_size) for rank k's writer, which reads ``distill.json`` and commits its units to
            ``distill.rank<k>.json`` only. Default: None.
        start_time (float | None): ``time.monotonic()`` when the run's work began, for ``wall_time_s`` (e.g. a
            selection that scores the whole pool before it opens the writer). Default: None (now).

    Raises:
        ValueError: Invalid arguments, or (resume) the existing manifest belongs to another run (method, scale,
            size_control or options_hash differ); the message names distill.json (or the shard of another run).
        FileExistsError: ``resume=False`` and the folder already holds a manifest, or the folder holds images or
            shards but no manifest. Nothing is ever deleted.
        FileNotFoundError: (``shard=k``) rank 0 has not created ``distill.json`` yet.
        RuntimeError: (``shard=k``) rank k's shard of an earlier run exists: rank 0 must open the folder first.
    """

    def __init__(self, root, method, scale, source, size_control, options, resume=True, unit_order=None,
                 world_size=1, shard=None, start_time=None):
        if not isinstance(method, str) or not method:
            raise ValueError(f'method must be a non-empty str, got {method!r}.')
        if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
            raise ValueError(f'scale must be a positive int, got {scale!r}.')
        if not isinstance(source, Mapping):
            raise ValueError(f'source must be a dict (folder, num_images, ...), got {source!r}.')
        if not isinstance(size_control, Mapping) or not size_control:
            raise ValueError(f"size_control must be a non-empty dict such as {{'r': 0.1}}, got {size_control!r}.")
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f'options must be a dict or None, got {type(options).__name__}.')
        if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
            raise ValueError(f'world_size must be an int >= 1, got {world_size!r}.')
        if shard is not None and (isinstance(shard, bool) or not isinstance(shard, (int, np.integer))
                                  or not 1 <= shard < world_size):
            raise ValueError(f'shard must be None (rank 0) or a rank in [1, world_size={world_size}), got {shard!r}.')
        self.root = osp.abspath(os.fspath(root))
        self.scale = int(scale)
        self.manifest_path = osp.join(self.root, MANIFEST_NAME)
        self.meta_info_path = osp.join(self.root, META_INFO_NAME)
        self.unit_order = None if unit_order is None else [_unit_id(u) for u in unit_order]
        self.shard_path = None if shard is None else shard_path(self.root, shard)
        self._shard = None
        self._start = time.monotonic() if start_time is None else float(start_time)
        logger = get_root_logger()

        new = {
            'format': FORMAT_NAME,
            'format_version': FORMAT_VERSION,
            'method': method,
            'scale': self.scale,
            'lr_for_training': LR_FOR_TRAINING,
            'source': to_jsonable(source),
            'size_control': to_jsonable(size_control),
            'complete': False,
            'num_pairs': 0,
            'units_finished': [],
            'wall_time_s': 0.0,
            'created': _now(),
            'updated': None,
            'versions': collect_versions(),
            'options_hash': options_hash(options),
            'options': to_jsonable(dict(options or {})),
            'world_size': int(world_size),
            'pairs': [],
        }

        if shard is not None:
            self._open_shard(new, int(shard))
        elif osp.exists(self.manifest_path):
            if not resume:
                raise FileExistsError(f'{self.manifest_path} already exists (resume=False): pick another output '
                                      'folder, or resume the run. Nothing was changed.')
            old = read_manifest(self.root)
            self._check_same_run(old, new)
            _check_manifest_consistency(old, self.manifest_path)
            if old.get('versions') != new['versions']:
                logger.warning(f'Resuming {self.root} with other software versions: {old.get("versions")} -> '
                               f'{new["versions"]}.')
            # keep the record of the run, take this run's description and options
            for key in ('format_version', 'lr_for_training', 'source', 'options', 'versions', 'world_size'):
                old[key] = new[key]
            self._manifest = old
            self._wall_base = float(old.get('wall_time_s', 0.0))
            self._cleanup_tmp()
            merged = self.merge_shards()  # an interrupted multi-process run: its ranks' finished units count
            self._warn_orphans(logger)
            # meta_info.txt may lag behind the manifest after a crash between the two writes
            _write_bytes_atomic(self.meta_info_path, meta_info_text(self._manifest['pairs']).encode('utf-8'))
            logger.info(f'Resuming distilled set {self.root}: {len(self._manifest["units_finished"])} units finished '
                        f'({len(merged)} merged from shards), {len(self._manifest["pairs"])} pairs.')
        else:
            for sub in (HR_DIR, LR_DIR, LR_FLOAT_DIR):
                folder = osp.join(self.root, sub)
                if osp.isdir(folder) and any(not v.startswith('.') for v in os.listdir(folder)):
                    raise FileExistsError(f'{folder} holds files but {self.manifest_path} does not exist: this is not '
                                          'a distilled set written by this writer; pick another output folder.')
            shards = pending_shards(self.root)
            if shards:
                raise FileExistsError(f'{shards[0][1]} exists but {self.manifest_path} does not: this is not a '
                                      'distilled set written by this writer; pick another output folder.')
            self._manifest = None
            self._wall_base = 0.0
            for sub in (HR_DIR, LR_DIR, LR_FLOAT_DIR):
                os.makedirs(osp.join(self.root, sub), exist_ok=True)
            self._cleanup_tmp()
            self._commit(new)

    def _open_shard(self, new, rank):
        """Rank ``rank``'s writer: read ``distill.json`` (rank 0 made it), start an empty shard; writes nothing."""
        if not osp.exists(self.manifest_path):
            raise FileNotFoundError(f'{self.manifest_path} does not exist: the writer of rank 0 (shard=None) must open '
                                    f'{self.root} before the writer of rank {rank}.')
        if osp.exists(self.shard_path):
            raise RuntimeError(f'{self.shard_path} is left by an earlier run and not merged: the writer of rank 0 '
                               '(shard=None) merges it when it opens the folder, which must happen first.')
        old = read_manifest(self.root)
        self._check_same_run(old, new)
        _check_manifest_consistency(old, self.manifest_path)
        self._manifest = old
        self._shard = {'format': SHARD_FORMAT_NAME, 'rank': rank, 'method': new['method'], 'scale': new['scale'],
                       'size_control': new['size_control'], 'options_hash': new['options_hash'],
                       'units_finished': [], 'pairs': []}

    # ------------------------------------------------------------------------------------------------------------
    def _check_same_run(self, old, new, path=None):
        diffs = []
        for key in ('method', 'scale', 'size_control'):
            if old.get(key) != new[key]:
                diffs.append(f'{key}: {old.get(key)!r} (stored) vs {new[key]!r} (this run)')
        if old.get('options_hash') != new['options_hash']:
            changed = _diff_paths(to_jsonable(old.get('options', {})), new['options']) if 'options' in old else []
            diffs.append(f'options_hash differs (changed options: {", ".join(changed) or "unknown"})')
        if diffs:
            raise ValueError(f'{path or self.manifest_path} belongs to another run: ' + '; '.join(diffs) +
                             '. Pick another output folder for this run (or restore the original options to resume).')

    def _cleanup_tmp(self):
        """Remove temporary files left by an interrupted writer (only ``.distill-tmp-*`` files)."""
        for sub in ('', HR_DIR, LR_DIR, LR_FLOAT_DIR):
            folder = osp.join(self.root, sub)
            if not osp.isdir(folder):
                continue
            for entry in os.listdir(folder):
                path = osp.join(folder, entry)
                if entry.startswith(_TMP_PREFIX) and osp.isfile(path):
                    os.remove(path)

    def _warn_orphans(self, logger):
        folder = osp.join(self.root, HR_DIR)
        if not osp.isdir(folder):
            return
        listed = {p['name'] for p in self._manifest['pairs']}
        orphans = sorted(v for v in os.listdir(folder) if not v.startswith('.') and osp.splitext(v)[0] not in listed)
        if orphans:
            logger.warning(f'{len(orphans)} file(s) in {osp.join(self.root, HR_DIR)} are not listed in '
                           f'{MANIFEST_NAME} (left by an interrupted unit, e.g. {orphans[0]}); they are ignored by '
                           'readers and overwritten when their unit is written again.')

    def _in_unit_order(self, record):
        """``record`` (manifest or shard) with its units and pairs in ``unit_order`` (stable; no order: unchanged)."""
        if self.unit_order is None:
            return dict(record)
        position = {u: i for i, u in enumerate(self.unit_order)}

        def key(uid):
            return position.get(uid, len(position))

        return dict(record, units_finished=sorted(record['units_finished'], key=key),
                    pairs=sorted(record['pairs'], key=lambda p: key(p['unit'])))

    def _commit(self, manifest):
        """Write ``manifest`` (then meta_info.txt) atomically; the in-memory state changes only on success."""
        manifest = self._in_unit_order(manifest)
        manifest['num_pairs'] = len(manifest['pairs'])
        manifest['updated'] = _now()
        manifest['wall_time_s'] = round(self._wall_base + time.monotonic() - self._start, 3)
        _write_json_atomic(self.manifest_path, manifest)
        self._manifest = manifest
        _write_bytes_atomic(self.meta_info_path, meta_info_text(manifest['pairs']).encode('utf-8'))

    def _store(self, pairs, units):
        """Commit this writer's record: ``distill.json`` (shard None) or its shard, atomically."""
        if self._shard is None:
            self._commit(dict(self._manifest, pairs=pairs, units_finished=units, complete=False))
        else:
            shard = self._in_unit_order(dict(self._shard, pairs=pairs, units_finished=units))
            _write_json_atomic(self.shard_path, shard)
            self._shard = shard

    # ------------------------------------------------------------------------------------------------------------
    @property
    def manifest(self):
        """dict: A deep copy of the current manifest (for a shard writer: ``distill.json`` as it was opened)."""
        return copy.deepcopy(self._manifest)

    @property
    def finished_units(self):
        """list[str]: Ids of the finished units, in the order they are listed (a shard writer: its own last)."""
        return list(self._manifest['units_finished']) + (list(self._shard['units_finished']) if self._shard else [])

    @property
    def complete(self):
        """bool: Whether :meth:`finalize` was called after the last :meth:`write_unit`."""
        return bool(self._manifest['complete'])

    def is_finished(self, unit):
        """Whether ``unit`` (str or int id) is finished (its pairs are in the manifest, or in this writer's shard)."""
        uid = _unit_id(unit)
        in_shard = self._shard is not None and uid in self._shard['units_finished']
        return in_shard or uid in self._manifest['units_finished']

    def _prepare_pair(self, pair, uid):
        if not isinstance(pair, Mapping):
            raise ValueError(f'Unit {uid!r}: each pair must be a dict with keys name, lq, gt, info; got '
                             f'{type(pair).__name__}.')
        unknown = set(pair) - {'name', 'lq', 'gt', 'info'}
        if unknown or 'name' not in pair or 'lq' not in pair or 'gt' not in pair:
            raise ValueError(f'Unit {uid!r}: a pair needs the keys name, lq, gt (and optional info); got '
                             f'{sorted(pair)}.')
        name = pair['name']
        _check_name(name)
        arrays = {}
        for key in ('lq', 'gt'):
            arr = pair[key]
            if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f'Pair {name!r}: {key} must be a float numpy array (H, W, 3) RGB in [0, 1], got '
                                 f'{type(arr).__name__}{" " + str(arr.dtype) if isinstance(arr, np.ndarray) else ""}'
                                 '.')
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
                raise ValueError(f'Pair {name!r}: {key} must have shape (H, W, 3), got {arr.shape}.')
            if not np.all(np.isfinite(arr)):
                raise ValueError(f'Pair {name!r}: {key} holds NaN or infinite values.')
            arrays[key] = np.clip(arr.astype(np.float32), 0., 1.)
        lq, gt = arrays['lq'], arrays['gt']
        h, w = lq.shape[:2]
        if gt.shape != (self.scale * h, self.scale * w, 3):
            raise ValueError(f'Pair {name!r}: gt shape {gt.shape} is not scale ({self.scale}) x lq shape {lq.shape}; '
                             f'expected {(self.scale * h, self.scale * w, 3)}.')
        info = pair.get('info') or {}
        if not isinstance(info, Mapping):
            raise ValueError(f'Pair {name!r}: info must be a dict, got {type(info).__name__}.')
        clash = _PAIR_RESERVED & set(map(str, info))
        if clash:
            raise ValueError(f'Pair {name!r}: info may not use the reserved keys {sorted(clash)}.')
        entry = {'name': name, 'unit': uid, 'hr_shape': list(gt.shape), 'lr_shape': list(lq.shape)}
        entry.update(to_jsonable(info))
        return entry, lq, gt

    def write_unit(self, unit, pairs):
        """Store the pairs of one unit and mark it finished (idempotent: a rewrite replaces the unit's pairs).

        Everything is validated before anything is written. Each file goes through a temporary name and
        ``os.replace``; the manifest (a shard writer: its shard), then meta_info.txt, are updated atomically
        afterwards. When the unit was written before, it is first removed from the manifest (so that a crash during
        the rewrite leaves a consistent set without it) and files of its old pairs that the new pairs do not reuse
        are deleted at the end.

        Args:
            unit (str | int): Unit id.
            pairs (list[dict]): Each ``{'name': str (unique in the set, no extension), 'lq': float ndarray (h, w, 3)
                RGB [0, 1], 'gt': float ndarray (scale*h, scale*w, 3) RGB [0, 1], 'info': dict (optional,
                provenance, merged into the manifest entry)}``. Values are clamped to [0, 1]; stored as float32.

        Raises:
            TypeError: Invalid unit id.
            ValueError: Invalid pair (named): keys, dtype, shape (gt must be scale x lq), non-finite values, name
                used twice or by another unit, reserved info keys; (shard writer) a unit ``distill.json`` lists.
            OSError: When writing fails (the manifest keeps its previous state).
        """
        uid = _unit_id(unit)
        if isinstance(pairs, Mapping) or not hasattr(pairs, '__iter__'):
            raise ValueError(f'Unit {uid!r}: pairs must be a list of dicts.')
        if self._shard is not None and uid in self._manifest['units_finished']:
            raise ValueError(f'Unit {uid!r} is already listed in {self.manifest_path}; only the writer of rank 0 '
                             f'(shard=None) may rewrite it, not the writer of {self.shard_path}.')
        listed = self._manifest['pairs'] + (self._shard['pairs'] if self._shard is not None else [])
        others = {p['name']: p['unit'] for p in listed if p['unit'] != uid}
        prepared, names = [], set()
        for pair in pairs:
            entry, lq, gt = self._prepare_pair(pair, uid)
            if entry['name'] in names:
                raise ValueError(f'Unit {uid!r}: pair name {entry["name"]!r} is used twice.')
            if entry['name'] in others:
                raise ValueError(f'Unit {uid!r}: pair name {entry["name"]!r} is already used by unit '
                                 f'{others[entry["name"]]!r}; names must be unique in the set.')
            names.add(entry['name'])
            prepared.append((entry, lq, gt))

        record = self._manifest if self._shard is None else self._shard
        old_names = [p['name'] for p in record['pairs'] if p['unit'] == uid]
        kept_pairs = [p for p in record['pairs'] if p['unit'] != uid]
        kept_units = [u for u in record['units_finished'] if u != uid]
        if old_names or uid in record['units_finished']:
            self._store(kept_pairs, kept_units)

        for entry, lq, gt in prepared:
            paths = pair_paths(self.root, entry['name'])
            _write_bytes_atomic(paths['hr'], _encode_png(_to_uint8(gt), f'gt of pair {entry["name"]!r}'))
            _write_bytes_atomic(paths['lr'], _encode_png(_to_uint8(lq), f'lq of pair {entry["name"]!r}'))
            _write_bytes_atomic(paths['lr_float'], _encode_npy(np.ascontiguousarray(lq)))

        self._store(kept_pairs + [entry for entry, _, _ in prepared], kept_units + [uid])
        self._remove_pair_files(n for n in old_names if n not in names)

    def _remove_pair_files(self, names):
        for name in names:
            for path in pair_paths(self.root, name).values():
                if osp.isfile(path):
                    os.remove(path)

    def merge_shards(self):
        """Merge the shards of the other ranks into ``distill.json``, then delete them (rank 0's writer only).

        Every unit a shard lists replaces that unit's entries in the manifest (files of its former pairs that the
        shard's pairs do not reuse are deleted afterwards); the manifest is then replaced atomically (in
        ``unit_order``, marked incomplete until :meth:`finalize`), and only then are the shards removed, so a crash
        in between makes the next merge repeat the same replacement. Called when the folder is opened (shards left
        by an interrupted run) and by the model after the last unit of every rank (behind a barrier).

        Returns:
            list[str]: The units merged, by shard rank then shard order (empty, and nothing written, without
            shards).

        Raises:
            RuntimeError: Called on a shard writer.
            ValueError: A shard that is not one (see :func:`read_shard`), belongs to another run (method, scale,
                size_control or options_hash differ from the manifest's), or uses a pair name another unit uses;
                the message names the shard.
        """
        if self._shard is not None:
            raise RuntimeError(f'merge_shards is for the writer of rank 0 (shard=None), not of {self.shard_path}.')
        shards = pending_shards(self.root)
        if not shards:
            return []
        pairs, units = list(self._manifest['pairs']), list(self._manifest['units_finished'])
        replaced, merged = [], []
        for _, path in shards:
            shard = read_shard(path)
            self._check_same_run(self._manifest, dict(shard, options=self._manifest.get('options', {})), path)
            for uid in shard['units_finished']:
                entries = [p for p in shard['pairs'] if p['unit'] == uid]
                replaced.extend(p['name'] for p in pairs if p['unit'] == uid)
                pairs = [p for p in pairs if p['unit'] != uid] + entries
                units = [u for u in units if u != uid] + [uid]
                merged.append(uid)
            seen = {}
            for pair in pairs:
                if seen.setdefault(pair['name'], pair['unit']) != pair['unit']:
                    raise ValueError(f'{path}: pair name {pair["name"]!r} of unit {pair["unit"]!r} is already used by '
                                     f'unit {seen[pair["name"]]!r}; names must be unique in the set.')
        self._commit(dict(self._manifest, pairs=pairs, units_finished=units, complete=False))
        kept = {p['name'] for p in pairs}
        self._remove_pair_files(n for n in replaced if n not in kept)
        for _, path in shards:
            os.remove(path)
        get_root_logger().info(f'Merged {len(shards)} shard(s) into {self.manifest_path}: {len(merged)} unit(s).')
        return merged

    def finalize(self, extra=None):
        """Mark the set complete, merge ``extra`` into the manifest and write it atomically.

        Args:
            extra (Mapping | None): Additional top-level manifest fields (stored JSON-safe), e.g. final metrics.
                The format's own fields may not be overridden. Default: None.

        Returns:
            dict: A copy of the final manifest. A set that is already complete is left untouched when ``extra`` is
            empty (a rerun over a finished set writes nothing).

        Raises:
            ValueError: When ``extra`` is not a dict or uses a reserved field.
            RuntimeError: Called on a shard writer (rank 0 merges the shards and finalises).
        """
        if self._shard is not None:
            raise RuntimeError(f'finalize is for the writer of rank 0 (shard=None), which merges {self.shard_path}; '
                               'a shard writer only writes units.')
        if self.complete and not extra:
            return self.manifest
        extra = {} if extra is None else extra
        if not isinstance(extra, Mapping):
            raise ValueError(f'extra must be a dict, got {type(extra).__name__}.')
        clash = _MANIFEST_RESERVED & set(map(str, extra))
        if clash:
            raise ValueError(f'finalize(extra) may not override the manifest fields {sorted(clash)}.')
        manifest = dict(self._manifest)
        manifest.update(to_jsonable(extra))
        manifest['complete'] = True
        self._commit(manifest)
        return self.manifest


# ----------------------------------------------------------------------------------------------------------------
# lmdb
# ----------------------------------------------------------------------------------------------------------------
def make_distilled_lmdb(root, compress_level=1, multiprocessing_read=False, n_thread=8):
    """Convert a distilled set's ``hr/`` and ``lr/`` PNGs to ``hr.lmdb`` / ``lr.lmdb`` (keys = pair names).

    Uses BasicSR's ``make_lmdb_from_imgs``. Each database is built under a temporary name in ``root`` and renamed
    when done, so an interrupted conversion leaves no half-built ``*.lmdb`` with a final name. A small
    ``distill_source.json`` in each database records the manifest state it was made from. The float LR copy is not
    converted: lmdb readers use the LR PNGs.

    Args:
        root (str): Distilled-set folder.
        compress_level (int): PNG compression level of the stored images. Default: 1.
        multiprocessing_read (bool): Read images with a process pool first. Default: False.
        n_thread (int): Processes for ``multiprocessing_read``. Default: 8.

    Returns:
        dict: ``{'hr': path of hr.lmdb, 'lr': path of lr.lmdb}``.

    Raises:
        FileExistsError: When ``hr.lmdb`` or ``lr.lmdb`` already exists (remove it yourself to rebuild).
        ValueError: When the set is invalid (see :func:`validate_distilled_set`) or empty.
    """
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    manifest = validate_distilled_set(root)
    if not manifest['pairs']:
        raise ValueError(f'{osp.join(root, MANIFEST_NAME)} lists no pairs; nothing to convert.')
    targets = lmdb_paths(root)
    for path in targets.values():
        if osp.exists(path):
            raise FileExistsError(f'{path} already exists; remove it to rebuild the lmdb copies.')
    names = [p['name'] for p in manifest['pairs']]
    source = {'manifest_updated': manifest.get('updated'), 'num_pairs': len(names)}
    for kind, sub in (('hr', HR_DIR), ('lr', LR_DIR)):
        tmp = osp.join(root, f'{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{kind}.lmdb')
        files = [f'{n}.png' for n in names]
        # BasicSR estimates the map size from the first image only (too small for small or uneven sets); the map
        # is a sparse reservation, so be generous
        map_size = max(64 << 20, 10 * sum(osp.getsize(osp.join(root, sub, f)) for f in files))
        try:
            make_lmdb_from_imgs(
                osp.join(root, sub),
                tmp,
                files,
                names,
                compress_level=compress_level,
                multiprocessing_read=multiprocessing_read,
                n_thread=n_thread,
                map_size=map_size)
            _write_json_atomic(osp.join(tmp, LMDB_SOURCE_NAME), source)
            os.replace(tmp, targets[kind])
        except BaseException:
            if osp.isdir(tmp):
                shutil.rmtree(tmp)
            raise
    return targets

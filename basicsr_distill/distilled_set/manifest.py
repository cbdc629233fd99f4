"""The manifest ``distill.json`` and the shards of a distilled set: reading, checking and writing them, the options
hash, the versions recorded as provenance, and ``meta_info.txt`` (derived from the manifest).
"""
import cv2
import hashlib
import json
import logging
import math
import numpy as np
import os
import platform
import re
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from os import path as osp

from basicsr_distill.distilled_set.layout import (FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, META_INFO_NAME,
                                                  PAIR_KINDS, SHARD_FORMAT_NAME, meta_info_text)
from basicsr_distill.utils.file_io import write_bytes_atomic
from basicsr_distill.version import __version__

# Top-level option keys left out of ``options_hash``: run bookkeeping that may change between a run and its
# restart without changing what is distilled (BasicSR draws a new ``manual_seed`` at every start when none is set;
# finished units are self-contained, so a restart with another seed is still a valid continuation).
HASH_IGNORED_KEYS = frozenset({
    'path', 'auto_resume', 'dist', 'rank', 'world_size', 'num_gpu', 'is_train', 'root_path', 'manual_seed', 'logger',
    'debug', 'launcher', 'force_yml', 'name'
})

# Fields every pair entry has (and that ``info`` may not override).
_PAIR_RESERVED = frozenset({'name', 'unit', 'hr_shape', 'lr_shape'})
# Field of a pair entry (format_version >= 2) with the SHA-256 of its files: ``{'hr': hex, 'lr': hex, 'lr_float':
# hex}``, computed by the writer from the bytes it wrote; ``info`` may not use it either.
PAIR_HASH_KEY = 'sha256'
_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
# Manifests already noted in this process as holding pairs without hashes (the note is logged once per manifest).
_NOTED_UNHASHED = set()
# Manifest (and shard) field with the SHA-256 of the source images each finished unit was computed from:
# ``{unit id: {image path: hex}}``, hashed when the run opened the set (see ``DistilledSetWriter(unit_sources=...)``).
# Absent in sets written before it was recorded, and for units whose writer was given no sources.
UNIT_SOURCES_KEY = 'unit_sources'
# Manifest fields that ``finalize(extra)`` may not override.
_MANIFEST_RESERVED = frozenset({
    'format', 'format_version', 'method', 'scale', 'lr_for_training', 'size_control', 'complete', 'num_pairs',
    'units_finished', 'wall_time_s', 'created', 'updated', 'versions', 'options_hash', 'options', 'pairs', 'world_size',
    UNIT_SOURCES_KEY
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


def sha256_hex(data):
    """SHA-256 of ``data`` (bytes) as 64 lowercase hex digits (the form a pair entry's ``sha256`` records)."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path, chunk_size=1 << 20):
    """SHA-256 of the file ``path`` (64 lowercase hex digits), read in chunks of ``chunk_size`` bytes.

    Raises:
        OSError: The file cannot be read (the message names it).
    """
    digest = hashlib.sha256()
    try:
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(chunk_size), b''):
                digest.update(chunk)
    except OSError as err:
        raise type(err)(err.errno, f'Cannot read the source image {path} to hash it: {err.strerror}') from err
    return digest.hexdigest()


def _unit_sources_problem(record):
    """Why a manifest's or shard's ``unit_sources`` is malformed, or None (also None when it has none)."""
    sources = record.get(UNIT_SOURCES_KEY)
    if sources is None:
        return None
    if not isinstance(sources, dict) or not all(
            isinstance(v, dict) and all(isinstance(h, str) and _SHA256_RE.match(h) for h in v.values())
            for v in sources.values()):
        return (f'field {UNIT_SOURCES_KEY!r} must map unit ids to {{image path: 64 lowercase hex digits}}, got '
                f'{str(sources)[:200]}')
    return None


def _hash_field_problem(pair):
    """Why a pair entry's ``sha256`` field is malformed, or None (also None when it has none: older format)."""
    if PAIR_HASH_KEY not in pair:
        return None
    hashes = pair[PAIR_HASH_KEY]
    if (not isinstance(hashes, dict) or sorted(hashes) != sorted(PAIR_KINDS)
            or not all(isinstance(v, str) and _SHA256_RE.match(v) for v in hashes.values())):
        return (f'its {PAIR_HASH_KEY!r} must map {", ".join(PAIR_KINDS)} to 64 lowercase hex digits each, got '
                f'{hashes!r}')
    return None


def to_jsonable(obj):
    """JSON-safe copy of ``obj``: dicts with str keys, lists, Python numbers, str; non-finite floats as ``'nan'``,
    ``'inf'``, ``'-inf'``; anything else ``str(obj)``.
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
    """SHA-256 (64 hex digits) of the JSON-safe options, top-level keys in :data:`HASH_IGNORED_KEYS` left out."""
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
    """Versions of the software that writes a set, offline and fast (mmengine's ``collect_env`` runs compilers).

    Returns:
        dict: python, platform, torch, cuda, torchvision, basicsr, basicsr_distill, numpy, cv2.
    """
    import torch
    from importlib import metadata

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


def _write_json_atomic(path, obj):
    """Write a JSON dict atomically; a ``pairs`` list is written last, one compact line per pair."""
    head = {k: v for k, v in obj.items() if k != 'pairs'}
    text = json.dumps(head, indent=2, ensure_ascii=False, allow_nan=False)
    if 'pairs' in obj:
        lines = ',\n'.join(f'    {json.dumps(p, ensure_ascii=False, allow_nan=False)}' for p in obj['pairs'])
        pairs = f'[\n{lines}\n  ]' if lines else '[]'
        text = f'{text[:-2]},\n  "pairs": {pairs}\n}}' if head else f'{{\n  "pairs": {pairs}\n}}'
    write_bytes_atomic(path, (text + '\n').encode('utf-8'))


def write_meta_info(root):
    """Regenerate ``root/meta_info.txt`` from the manifest, atomically; returns its path."""
    manifest = read_manifest(root)
    path = osp.join(root, META_INFO_NAME)
    write_bytes_atomic(path, meta_info_text(manifest['pairs']).encode('utf-8'))
    return path


def _load_json(path):
    """The parsed JSON file ``path``; ``ValueError`` naming the file when it is not valid JSON (UTF-8)."""
    try:
        with open(path, 'r', encoding='utf-8') as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f'{path} is not valid JSON ({err}).') from err


def read_manifest(root):
    """Read and sanity-check ``root/distill.json``.

    Returns:
        dict: The manifest.

    Raises:
        FileNotFoundError: When ``root/distill.json`` does not exist (named).
        ValueError: When it is not valid JSON, not a distilled-set manifest, of a newer format version, or misses a
            required field (named).
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
    _note_unhashed(manifest, path)
    return manifest


def _note_unhashed(manifest, path):
    """Log once per process and manifest that some of its pairs record no file hashes (sets of format_version 1)."""
    unhashed = sum(1 for p in manifest['pairs'] if isinstance(p, dict) and PAIR_HASH_KEY not in p)
    key = osp.abspath(path)
    if not unhashed or key in _NOTED_UNHASHED:
        return
    _NOTED_UNHASHED.add(key)
    # BasicSR's logger as it is: initialising it here (get_root_logger) would keep a later log_file from attaching
    logging.getLogger('basicsr').info(
        f'{path}: {unhashed} of {len(manifest["pairs"])} pairs record no SHA-256 hashes of their '
        'files (written before format_version 2): they can be checked for sizes and decoded, not '
        'proven unchanged; verify: full (and scripts/verify_distilled.py) can only decode them. '
        'Write the set again to record hashes.')


def _check_manifest_consistency(manifest, manifest_path):
    if manifest.get('num_pairs', len(manifest['pairs'])) != len(manifest['pairs']):
        raise ValueError(f'{manifest_path}: num_pairs is {manifest["num_pairs"]} but {len(manifest["pairs"])} pairs '
                         'are listed.')
    finished = set(manifest['units_finished'])
    problem = _unit_sources_problem(manifest)
    if problem:
        raise ValueError(f'{manifest_path}: {problem}.')
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
        problem = _hash_field_problem(pair) or _scale_problem(pair, manifest['scale'])
        if problem:
            raise ValueError(f'{manifest_path}: pair {name!r}: {problem}.')


def _scale_problem(pair, scale):
    """Why a pair entry's ``hr_shape`` is not ``scale`` x its ``lr_shape``, or None."""
    hr, lr = pair['hr_shape'], pair['lr_shape']
    if not all(isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) and x > 0 for x in v) for v in (hr, lr)):
        return f'hr_shape and lr_shape must be lists of 3 positive ints, got {hr!r} and {lr!r}'
    if hr[:2] != [scale * lr[0], scale * lr[1]]:
        factors = {hr[0] / lr[0], hr[1] / lr[1]}
        found = f'x{factors.pop():g}' if len(factors) == 1 else 'not one factor'
        return (
            f'its HR {tuple(hr[:2])} is not scale ({scale}) x its LR {tuple(lr[:2])} ({found}): the manifest\'s '
            '"scale" disagrees with its pairs (edited by hand, or copied from another set); restore the manifest or '
            'write the set again')
    return None


def read_shard(path):
    """Read and sanity-check one rank's shard ``distill.rank<k>.json``.

    Returns:
        dict: ``format``, ``rank``, ``method``, ``scale``, ``size_control``, ``options_hash``, ``units_finished``,
        ``pairs`` (manifest pair entries).

    Raises:
        ValueError: When it is not valid JSON, not a shard, misses a field or lists a pair of an unlisted unit (named).
    """
    shard = _load_json(path)
    if not isinstance(shard, dict) or shard.get('format') != SHARD_FORMAT_NAME:
        raise ValueError(f'{path} is not a shard of a distilled set (expected "format": "{SHARD_FORMAT_NAME}").')
    for key, typ in (('rank', int), ('method', str), ('scale', int), ('size_control', dict), ('options_hash', str),
                     ('units_finished', list), ('pairs', list)):
        if not isinstance(shard.get(key), typ) or isinstance(shard.get(key), bool):
            raise ValueError(f'{path}: field {key!r} must be {typ.__name__}, got {shard.get(key)!r}.')
    units = set(shard['units_finished'])
    problem = _unit_sources_problem(shard)
    if problem:
        raise ValueError(f'{path}: {problem}.')
    for i, pair in enumerate(shard['pairs']):
        if not isinstance(pair, dict) or not all(k in pair for k in _PAIR_RESERVED) or pair['unit'] not in units:
            raise ValueError(f'{path}: pair #{i} must be a dict with keys {sorted(_PAIR_RESERVED)} of a unit listed '
                             'in units_finished.')
        problem = _hash_field_problem(pair)
        if problem:
            raise ValueError(f'{path}: pair #{i} ({pair["name"]!r}): {problem}.')
    return shard

"""Folder layout of a distilled set (:mod:`basicsr_distill.distilled_set`): names, format constants, pair names and unit
ids, shards.
"""
import numpy as np
import os
import re
from os import path as osp

from basicsr_distill.utils.file_io import TMP_PREFIX

FORMAT_NAME = 'basicsr_distill.distilled_set'
# 1: no file hashes; 2: every pair entry records the SHA-256 of its files (``sha256``, see the manifest module).
FORMAT_VERSION = 2
MANIFEST_NAME = 'distill.json'
META_INFO_NAME = 'meta_info.txt'
HR_DIR = 'hr'
LR_DIR = 'lr'
LR_FLOAT_DIR = 'lr_float'
HR_LMDB = 'hr.lmdb'
LR_LMDB = 'lr.lmdb'
LMDB_SOURCE_NAME = 'distill_source.json'
LR_FOR_TRAINING = 'lr_float'
# The files of a pair, as keys of :func:`pair_paths` and of a pair entry's ``sha256``.
PAIR_KINDS = ('hr', 'lr', 'lr_float')
SHARD_FORMAT_NAME = 'basicsr_distill.distilled_set.shard'
_SHARD_RE = re.compile(r'^distill\.rank([1-9][0-9]*)\.json$')
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$')
_FORBIDDEN_NAME_SUFFIXES = ('.png', '.npy', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def pair_paths(root, name):
    """Paths of one pair's files: ``{'hr': root/hr/<name>.png, 'lr': root/lr/<name>.png, 'lr_float': ...npy}``."""
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


def _read_meta_info_names(path):
    with open(path, 'r') as f:
        entries = [line.strip().split(' ')[0] for line in f if line.strip()]
    return [osp.splitext(v)[0] for v in entries]


def _check_name(name):
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.lower().endswith(_FORBIDDEN_NAME_SUFFIXES):
        raise ValueError(f'Invalid pair name {name!r}: use 1-200 ASCII letters, digits, "_", "-", "." (not first), '
                         'no file extension (it is also the lmdb key and a meta_info.txt entry).')


def check_source_name(pair_name, source):
    """Refuse, before any work, an input whose pair name (e.g. ``'<image stem>_idc0000'``) would be invalid.

    Raises:
        ValueError: Naming ``source`` (the input file or folder), the pair name and the rule.
    """
    try:
        _check_name(pair_name)
    except ValueError:
        raise ValueError(f'{source}: its name gives the pair name {pair_name!r}, which the distilled-set format '
                         'does not accept: pair names are 1-200 ASCII letters, digits, "_", "-", "." (not first); '
                         'rename the input (no spaces or non-ASCII characters)') from None


def _unit_id(unit):
    """Unit id as str (ints accepted)."""
    if isinstance(unit, bool) or not isinstance(unit, (str, int, np.integer)):
        raise TypeError(f'A unit id must be a str or an int, got {type(unit).__name__}: {unit!r}.')
    uid = str(int(unit)) if not isinstance(unit, str) else unit
    if not uid:
        raise ValueError('A unit id must not be empty.')
    return uid


def shard_path(root, rank):
    """Path of rank ``rank``'s shard of a multi-process run: ``root/distill.rank<rank>.json`` (rank >= 1)."""
    return osp.join(root, f'distill.rank{int(rank)}.json')


def pending_shards(root):
    """Shards an unfinished multi-process run left in ``root``: ``[(rank, path)]`` by rank (empty if none)."""
    if not osp.isdir(root):
        return []
    found = []
    for entry in os.listdir(root):
        match = _SHARD_RE.match(entry)
        if match:
            found.append((int(match.group(1)), osp.join(root, entry)))
    return sorted(found)


def dataset_size(path):
    """Size on disk of a training set, in bytes.

    A distilled set (a folder with ``distill.json``) counts the files of its ``hr/``, ``lr/`` and ``lr_float/``
    folders (not the manifest, ``meta_info.txt``, lmdb copies or ``.distill-tmp-*`` leftovers); any other folder
    counts all its regular files, recursively (symbolic links to folders are not followed).

    Args:
        path (str): The folder.

    Returns:
        dict: ``{'path': str, 'bytes': int, 'files': int, 'parts': {'hr': int, 'lr': int, 'lr_float': int} | None}``,
        ``parts`` (bytes per folder) only for a distilled set.

    Raises:
        FileNotFoundError: If ``path`` is not a folder.
    """
    path = str(path)
    if not osp.isdir(path):
        raise FileNotFoundError(f'Training set folder not found: "{path}".')

    def walk(folder, skip_tmp):
        total = count = 0
        for root, _, files in os.walk(folder):
            for name in files:
                file_path = osp.join(root, name)
                if (skip_tmp and name.startswith(TMP_PREFIX)) or not osp.isfile(file_path):
                    continue
                total += osp.getsize(file_path)
                count += 1
        return total, count

    if osp.isfile(osp.join(path, MANIFEST_NAME)):
        parts, total, count = {}, 0, 0
        for part in (HR_DIR, LR_DIR, LR_FLOAT_DIR):
            part_bytes, part_files = walk(osp.join(path, part), skip_tmp=True)
            parts[part] = part_bytes
            total, count = total + part_bytes, count + part_files
        return {'path': path, 'bytes': total, 'files': count, 'parts': parts}
    total, count = walk(path, skip_tmp=False)
    return {'path': path, 'bytes': total, 'files': count, 'parts': None}

"""Validation of a distilled set (manifest, pair files, meta_info.txt) and of its lmdb copies."""
import json
import numpy as np
from os import path as osp

from basicsr.utils import get_root_logger
from basicsr_distill.distilled_set.layout import (LMDB_SOURCE_NAME, MANIFEST_NAME, META_INFO_NAME,
                                                  _read_meta_info_names, lmdb_paths, pair_paths, pending_shards)
from basicsr_distill.distilled_set.manifest import _check_manifest_consistency, read_manifest

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_IEND = b'\x00\x00\x00\x00IEND\xaeB`\x82'


def _pair_file_problem(path, kind, shape):
    """Why a pair file is broken, from its first and last bytes only (no decoding), or None.

    PNG: signature, IHDR of the expected size, IEND at the end; npy: a float (H, W, 3) array of the expected shape
    filling the file. Finds truncated files, other formats and other sizes, not same-size changes (those need
    ``verify_distilled_set``).
    """
    with open(path, 'rb') as f:
        return _content_problem(f, osp.getsize(path), kind, shape)


def _content_problem(f, size, kind, shape):
    """:func:`_pair_file_problem` on an open binary file object ``f`` of ``size`` bytes (a file, or ``io.BytesIO``)."""
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
    """Check that ``root`` is a usable distilled set: manifest, scale, completeness, pair files and meta_info.txt.

    Pixels are not decoded; ``check_contents`` reads each file's first and last bytes (:func:`_pair_file_problem`).
    :func:`~basicsr_distill.distilled_set.verify.verify_distilled_set` checks hashes and decodes.

    Args:
        root (str): Distilled-set folder.
        scale (int | None): Expected upscaling factor; None skips the check. Default: None.
        require_complete (bool): Require ``complete: true``. Default: False.
        check_files (bool): Check the pair files and meta_info.txt (False for an lmdb-only reader). Default: True.
        check_contents (bool): Also check the headers, sizes and ends of the pair files. Default: False.

    Returns:
        dict: The manifest.

    Raises:
        FileNotFoundError: When the manifest is missing.
        ValueError: Invalid manifest (a pair whose ``hr_shape`` is not ``scale`` x its ``lr_shape`` included), scale
            mismatch (both scales named), incomplete set while ``require_complete``, or the first missing or broken
            pair file or an out-of-sync meta_info.txt (named).
    """
    manifest = read_manifest(root)
    manifest_path = osp.join(root, MANIFEST_NAME)
    _check_manifest_consistency(manifest, manifest_path)  # first: a manifest whose scale disagrees with its pairs
    if scale is not None and int(scale) != manifest['scale']:
        raise ValueError(f'{manifest_path} was distilled for scale x{manifest["scale"]}, but scale x{int(scale)} is '
                         'requested (check the "scale" of your option file or pick the set for that scale).')
    if require_complete and not manifest['complete']:
        raise ValueError(f'{incomplete_problem(root, manifest)}; resume the run to finish it.')
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
    problem = _meta_info_problem(root, manifest)
    if problem:
        raise ValueError(problem)
    return manifest


def incomplete_problem(root, manifest):
    """What is unfinished about a set whose manifest says ``complete: false``, or None when complete.

    Returns:
        str | None: E.g. ``'<root>/distill.json is not complete (complete: false: ...): 3 unit(s) finished, 6
        pair(s)'``.
    """
    if manifest['complete']:
        return None
    shards = pending_shards(root)
    more = (f'; {len(shards)} shard(s) of a multi-process run, e.g. {shards[0][1]}, are not merged yet'
            if shards else '')
    return (f'{osp.join(root, MANIFEST_NAME)} is not complete ("complete": false: the distillation run was interrupted '
            f'or has not finished; {len(manifest["units_finished"])} unit(s) finished, {len(manifest["pairs"])} '
            f'pair(s){more})')


def _meta_info_problem(root, manifest):
    """Why ``root/meta_info.txt`` does not match the manifest's pairs (message naming it), or None."""
    meta_path = osp.join(root, META_INFO_NAME)
    if not osp.isfile(meta_path):
        return (f'Distilled set {root}: {meta_path} is missing; regenerate it with '
                'basicsr_distill.distilled_set.write_meta_info(root).')
    meta_names = _read_meta_info_names(meta_path)
    names = [p['name'] for p in manifest['pairs']]
    if sorted(meta_names) != sorted(names):
        extra = sorted(set(meta_names) - set(names))
        missing = sorted(set(names) - set(meta_names))
        detail = f'not in the manifest: {extra[:3]}' if extra else (
            f'missing: {missing[:3]}' if missing else 'duplicate entries')
        return (f'{meta_path} is out of sync with {osp.join(root, MANIFEST_NAME)} ({detail}), probably after an '
                'interrupted write; regenerate it with basicsr_distill.distilled_set.write_meta_info(root) or by '
                'reopening the folder with DistilledSetWriter.')
    return None


def validate_distilled_lmdb(root, scale=None, require_complete=False):
    """Check a set's ``hr.lmdb`` / ``lr.lmdb`` against its manifest: every pair a key of both, with the recorded shapes.

    ``scale`` and ``require_complete`` as in :func:`validate_distilled_set`; returns the manifest. Logs a warning when
    the lmdb copies were made from an older state of the manifest.

    Raises:
        FileNotFoundError: When the manifest, an lmdb folder or its meta_info.txt is missing.
        ValueError: As :func:`validate_distilled_set`, or a pair missing from an lmdb or of another shape there (named).
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

"""Writing a distilled set: :class:`DistilledSetWriter`, unit by unit, resumable, with a multi-process run's shards
and their merge (docs/DistilledSetFormat.md, docs/MultiProcess.md).
"""
import copy
import cv2
import io
import numpy as np
import os
import time
from collections.abc import Mapping
from os import path as osp

from basicsr.utils import get_root_logger
from basicsr_distill.distilled_set.layout import (FORMAT_NAME, FORMAT_VERSION, HR_DIR, LR_DIR, LR_FLOAT_DIR,
                                                  LR_FOR_TRAINING, MANIFEST_NAME, META_INFO_NAME, SHARD_FORMAT_NAME,
                                                  _check_name, _unit_id, meta_info_text, pair_paths, pending_shards,
                                                  shard_path)
from basicsr_distill.distilled_set.manifest import (_MANIFEST_RESERVED, _PAIR_RESERVED, PAIR_HASH_KEY, UNIT_SOURCES_KEY,
                                                    _check_manifest_consistency, _diff_paths, _now, _write_json_atomic,
                                                    collect_versions, file_sha256, options_hash, read_manifest,
                                                    read_shard, sha256_hex, to_jsonable)
from basicsr_distill.utils.file_io import remove_stale_tmps, write_bytes_atomic


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


class DistilledSetWriter():
    """Write a distilled set unit by unit, resumable after a crash.

    A unit is the work a method finishes at once (an IDC instance, a GSDD class, ...); unit ids are str (``3`` and
    ``'3'`` are the same unit). In a multi-process run rank 0 opens the folder first with ``shard=None``, rank k >= 1
    afterwards with ``shard=k``, and rank 0 calls :meth:`merge_shards` once every rank is done.

    Args:
        root (str): Output folder (created if needed).
        method (str): Method name, e.g. ``'idc'``.
        scale (int): Upscaling factor (HR size = scale x LR size).
        source (Mapping): The source data, e.g. ``{'folder': ..., 'num_images': 91}``.
        size_control (Mapping): Budget, e.g. ``{'r': 0.1}`` or ``{'ipc': 10}``.
        options (Mapping | None): The run's full option dict (stored JSON-safe; hashed without
            :data:`~basicsr_distill.distilled_set.manifest.HASH_IGNORED_KEYS`).
        resume (bool): Continue a folder holding a manifest of the same run. Default: True.
        unit_order (Sequence[str | int] | None): Every unit id in the method's order; the manifest lists units and pairs
            in it (others after, in write order). None: write order. Default: None.
        world_size (int): Processes of the run (the manifest's ``world_size``). Default: 1.
        shard (int | None): None for the writer of ``distill.json``; k in [1, world_size) for rank k's writer, which
            commits to ``distill.rank<k>.json`` only. Default: None.
        start_time (float | None): ``time.monotonic()`` when the run's work began, for ``wall_time_s``. Default: None
            (now).
        unit_sources (Mapping[str | int, Sequence[str]] | None): Source images of each unit, hashed (SHA-256) at open
            and recorded by :meth:`write_unit`. On resume (``shard=None``) a finished unit whose images changed is
            handled by ``recompute_changed``; one that records none is kept with a warning. None: no check.
        recompute_changed (bool | Collection[str | int]): For finished units whose images changed: True drops them
            (pair files deleted, a warning names every image) to compute them again; False refuses (``ValueError``
            naming every image); a collection drops those units and refuses the others. Default: True.
        changed_hint (str | None): What to do, ending the refusal's message. Default: None (delete or rename the
            folder, or restore the images).

    Raises:
        ValueError: Invalid arguments, or (resume) the manifest belongs to another run (method, scale, size_control
            or options_hash differ) and holds a finished unit, a pair, a shard or a pair file (named). A record of
            another run that holds nothing is replaced, with a warning.
        FileExistsError: ``resume=False`` and a manifest exists, or the folder holds images or shards but no
            manifest. Nothing is deleted.
        FileNotFoundError: (``shard=k``) rank 0 has not created ``distill.json`` yet.
        RuntimeError: (``shard=k``) rank k's shard of an earlier run exists: rank 0 must open the folder first.
    """

    def __init__(self,
                 root,
                 method,
                 scale,
                 source,
                 size_control,
                 options,
                 resume=True,
                 unit_order=None,
                 world_size=1,
                 shard=None,
                 start_time=None,
                 unit_sources=None,
                 recompute_changed=True,
                 changed_hint=None):
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
        self._source_hashes = self._hash_sources(unit_sources)
        self.recomputed_units = []  # finished units dropped at open because their source images changed

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
            UNIT_SOURCES_KEY: {},
            'pairs': [],
        }

        if shard is not None:
            self._open_shard(new, int(shard))
        elif osp.exists(self.manifest_path) and not (resume and self._replaces_empty_record(new, logger)):
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
            self._check_sources(recompute_changed, changed_hint, logger)
            self._warn_orphans(logger)
            # meta_info.txt may lag behind the manifest after a crash between the two writes
            write_bytes_atomic(self.meta_info_path, meta_info_text(self._manifest['pairs']).encode('utf-8'))
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
        """Rank ``rank``'s writer: read ``distill.json`` (rank 0 made it), start an empty shard."""
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
        self._shard = {
            'format': SHARD_FORMAT_NAME,
            'rank': rank,
            'method': new['method'],
            'scale': new['scale'],
            'size_control': new['size_control'],
            'options_hash': new['options_hash'],
            'units_finished': [],
            UNIT_SOURCES_KEY: {},
            'pairs': []
        }

    # ------------------------------------------------------------------------------------------------------------
    def _replaces_empty_record(self, new, logger):
        """Whether ``distill.json`` records another run holding no unit, pair, shard or file (then replaced, logged)."""
        try:
            old = read_manifest(self.root)
        except (OSError, ValueError):
            return False
        diffs = self._run_diffs(old, new)
        if not diffs or old.get('units_finished') or old.get('pairs') or pending_shards(self.root):
            return False
        for sub in (HR_DIR, LR_DIR, LR_FLOAT_DIR):
            folder = osp.join(self.root, sub)
            if osp.isdir(folder) and any(not v.startswith('.') for v in os.listdir(folder)):
                return False
        logger.warning(f'{self.manifest_path} records another run ({"; ".join(diffs)}) but holds no finished unit '
                       'and no pair (that run stopped before its first unit): replaced by this run\'s record.')
        return True

    def _run_diffs(self, old, new):
        """What makes the record ``old`` another run than ``new`` (method, scale, size_control, options), as text."""
        diffs = []
        for key in ('method', 'scale', 'size_control'):
            if old.get(key) != new[key]:
                diffs.append(f'{key}: {old.get(key)!r} (stored) vs {new[key]!r} (this run)')
        if old.get('options_hash') != new['options_hash']:
            changed = _diff_paths(to_jsonable(old.get('options', {})), new['options']) if 'options' in old else []
            diffs.append(f'options_hash differs (changed options: {", ".join(changed) or "unknown"})')
        return diffs

    def _check_same_run(self, old, new, path=None):
        diffs = self._run_diffs(old, new)
        if diffs:
            raise ValueError(f'{path or self.manifest_path} belongs to another run: ' + '; '.join(diffs) +
                             '. Pick another output folder for this run (or restore the original options to resume).')

    @staticmethod
    def _hash_sources(unit_sources):
        """``{unit id: {image path: SHA-256}}`` of ``unit_sources`` (each file hashed once), or {} for None."""
        if unit_sources is None:
            return {}
        if not isinstance(unit_sources, Mapping):
            raise ValueError(
                f'unit_sources must map unit ids to lists of image paths, got {type(unit_sources).__name__}.')
        cache, hashes = {}, {}
        for unit, paths in unit_sources.items():
            if isinstance(paths, (str, bytes)) or not hasattr(paths, '__iter__'):
                raise ValueError(f'unit_sources[{unit!r}] must be a list of image paths, got {paths!r}.')
            for path in map(str, paths):
                if path not in cache:
                    cache[path] = file_sha256(path)
            hashes[_unit_id(unit)] = {str(p): cache[str(p)] for p in paths}
        return hashes

    def _check_sources(self, recompute_changed, changed_hint, logger):
        """Drop (or refuse) the finished units whose source images changed (see ``recompute_changed``)."""
        recorded = self._manifest.get(UNIT_SOURCES_KEY) or {}
        changed, unknown = {}, []
        for uid in self._manifest['units_finished']:
            if uid not in self._source_hashes:
                continue
            if uid not in recorded:
                unknown.append(uid)
                continue
            old, new = recorded[uid], self._source_hashes[uid]
            if sorted(old.values()) == sorted(new.values()):
                continue
            reasons = []
            for path, digest in new.items():
                if digest in old.values():
                    continue
                reasons.append(
                    f'{path} changed (SHA-256 {old[path][:12]}... when the unit was written, {digest[:12]}... '
                    'now)' if path in old else f'{path} is new to it')
            reasons.extend(f'{path} is no longer among its images' for path, digest in old.items()
                           if path not in new and digest not in new.values())
            changed[uid] = reasons
        if unknown:
            logger.warning(f'{self.manifest_path}: {len(unknown)} finished unit(s) (e.g. {unknown[0]!r}) record no '
                           'SHA-256 of their source images (written before they were recorded): they are kept, but a '
                           'source image changed since cannot be detected for them; delete or rename '
                           f'{self.root} to compute them again from the current images.')
        if not changed:
            return
        lines = '\n'.join(f'  unit {uid!r}: {"; ".join(reasons)}' for uid, reasons in changed.items())
        allowed = set(changed) if recompute_changed is True else (
            set() if recompute_changed is False else {_unit_id(u)
                                                      for u in recompute_changed})
        refused = [uid for uid in changed if uid not in allowed]
        if refused:
            hint = changed_hint or (f'Delete or rename {self.root} to write the set again from the current images, '
                                    'or restore the images.')
            raise ValueError(
                f'{self.manifest_path}: the source images of {len(changed)} finished unit(s) changed since '
                f'they were written, so their pairs are stale:\n{lines}\nNothing was changed. {hint}')
        names = [p['name'] for p in self._manifest['pairs'] if p['unit'] in changed]
        self._store([p for p in self._manifest['pairs'] if p['unit'] not in changed],
                    [u for u in self._manifest['units_finished'] if u not in changed])
        self._remove_pair_files(names)
        self.recomputed_units = list(changed)
        logger.warning(f'{self.manifest_path}: the source images of {len(changed)} finished unit(s) changed since they '
                       f'were written; their {len(names)} stale pair(s) are removed and the units computed again:\n'
                       f'{lines}')

    def _cleanup_tmp(self):
        """Remove the ``.distill-tmp-*`` files an interrupted writer left."""
        for sub in ('', HR_DIR, LR_DIR, LR_FLOAT_DIR):
            remove_stale_tmps(osp.join(self.root, sub))

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
        """``record`` (manifest or shard) with its units and pairs in ``unit_order`` (stable)."""
        if self.unit_order is None:
            return dict(record)
        position = {u: i for i, u in enumerate(self.unit_order)}

        def key(uid):
            return position.get(uid, len(position))

        ordered = dict(
            record,
            units_finished=sorted(record['units_finished'], key=key),
            pairs=sorted(record['pairs'], key=lambda p: key(p['unit'])))
        if UNIT_SOURCES_KEY in record:
            ordered[UNIT_SOURCES_KEY] = {
                u: record[UNIT_SOURCES_KEY][u]
                for u in sorted(record[UNIT_SOURCES_KEY], key=key)
            }
        return ordered

    def _commit(self, manifest):
        """Write ``manifest`` (then meta_info.txt) atomically; the in-memory state changes only on success."""
        manifest = self._in_unit_order(manifest)
        manifest['num_pairs'] = len(manifest['pairs'])
        manifest['updated'] = _now()
        manifest['wall_time_s'] = round(self._wall_base + time.monotonic() - self._start, 3)
        _write_json_atomic(self.manifest_path, manifest)
        self._manifest = manifest
        write_bytes_atomic(self.meta_info_path, meta_info_text(manifest['pairs']).encode('utf-8'))

    def _store(self, pairs, units, sources=None):
        """Commit this writer's record (``distill.json`` or its shard): kept hashes of ``units``, plus ``sources``."""
        record = self._manifest if self._shard is None else self._shard
        kept = {u: v for u, v in (record.get(UNIT_SOURCES_KEY) or {}).items() if u in set(units)}
        kept.update(sources or {})
        if self._shard is None:
            self._commit(
                dict(self._manifest, pairs=pairs, units_finished=units, complete=False, **{UNIT_SOURCES_KEY: kept}))
        else:
            shard = self._in_unit_order(
                dict(self._shard, pairs=pairs, units_finished=units, **{UNIT_SOURCES_KEY: kept}))
            _write_json_atomic(self.shard_path, shard)
            self._shard = shard

    # ------------------------------------------------------------------------------------------------------------
    @property
    def manifest(self):
        """dict: A deep copy of the current manifest (for a shard writer: ``distill.json`` as it was opened)."""
        return copy.deepcopy(self._manifest)

    @property
    def finished_units(self):
        """list[str]: Ids of the finished units, in listed order (a shard writer's own last)."""
        return list(self._manifest['units_finished']) + (list(self._shard['units_finished']) if self._shard else [])

    @property
    def complete(self):
        """bool: Whether :meth:`finalize` was called after the last :meth:`write_unit`."""
        return bool(self._manifest['complete'])

    def is_finished(self, unit):
        """Whether ``unit`` (str or int id) is finished (listed in the manifest, or in this writer's shard)."""
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
        clash = (_PAIR_RESERVED | {PAIR_HASH_KEY}) & set(map(str, info))
        if clash:
            raise ValueError(f'Pair {name!r}: info may not use the reserved keys {sorted(clash)}.')
        entry = {'name': name, 'unit': uid, 'hr_shape': list(gt.shape), 'lr_shape': list(lq.shape)}
        entry.update(to_jsonable(info))
        return entry, lq, gt

    def write_unit(self, unit, pairs):
        """Store the pairs of one unit and mark it finished (a rewrite replaces the unit's pairs).

        Everything is validated before anything is written; each pair entry records the SHA-256 of the bytes
        written (``sha256``: ``{'hr', 'lr', 'lr_float'}``). A rewritten unit is first removed from the manifest, so a
        crash leaves a consistent set without it.

        Args:
            unit (str | int): Unit id.
            pairs (list[dict]): Each ``{'name': str (unique in the set, no extension), 'lq': float ndarray (h, w, 3) RGB
                [0, 1], 'gt': float ndarray (scale*h, scale*w, 3) RGB [0, 1], 'info': dict (optional provenance, merged
                into the entry)}``. Values are clamped to [0, 1], stored as float32.

        Raises:
            TypeError: Invalid unit id.
            ValueError: Invalid pair (named): keys, dtype, shape (gt must be scale x lq), non-finite values, name used
                twice or by another unit, reserved info keys; (shard writer) a unit ``distill.json`` lists.
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
            contents = {
                'hr': _encode_png(_to_uint8(gt), f'gt of pair {entry["name"]!r}'),
                'lr': _encode_png(_to_uint8(lq), f'lq of pair {entry["name"]!r}'),
                'lr_float': _encode_npy(np.ascontiguousarray(lq))
            }
            for kind, content in contents.items():
                write_bytes_atomic(paths[kind], content)
            # the hashes of the very bytes written; committed with the entry (a shard keeps them through the merge)
            entry[PAIR_HASH_KEY] = {kind: sha256_hex(content) for kind, content in contents.items()}

        sources = {uid: self._source_hashes[uid]} if uid in self._source_hashes else None
        self._store(kept_pairs + [entry for entry, _, _ in prepared], kept_units + [uid], sources)
        self._remove_pair_files(n for n in old_names if n not in names)

    def _remove_pair_files(self, names):
        for name in names:
            for path in pair_paths(self.root, name).values():
                if osp.isfile(path):
                    os.remove(path)

    def merge_shards(self):
        """Merge the other ranks' shards into ``distill.json``, then delete them (rank 0's writer only).

        A shard's units replace theirs in the manifest, which is replaced atomically (incomplete until :meth:`finalize`)
        before the shards are removed, so a crash in between repeats the same merge.

        Returns:
            list[str]: The units merged, by shard rank then shard order (empty, nothing written, without shards).

        Raises:
            RuntimeError: Called on a shard writer.
            ValueError: A shard that is not one, belongs to another run, or reuses another unit's pair name (named).
        """
        if self._shard is not None:
            raise RuntimeError(f'merge_shards is for the writer of rank 0 (shard=None), not of {self.shard_path}.')
        shards = pending_shards(self.root)
        if not shards:
            return []
        pairs, units = list(self._manifest['pairs']), list(self._manifest['units_finished'])
        sources = dict(self._manifest.get(UNIT_SOURCES_KEY) or {})
        replaced, merged = [], []
        for _, path in shards:
            shard = read_shard(path)
            self._check_same_run(self._manifest, dict(shard, options=self._manifest.get('options', {})), path)
            for uid in shard['units_finished']:
                entries = [p for p in shard['pairs'] if p['unit'] == uid]
                replaced.extend(p['name'] for p in pairs if p['unit'] == uid)
                pairs = [p for p in pairs if p['unit'] != uid] + entries
                units = [u for u in units if u != uid] + [uid]
                sources.pop(uid, None)
                if uid in (shard.get(UNIT_SOURCES_KEY) or {}):
                    sources[uid] = shard[UNIT_SOURCES_KEY][uid]
                merged.append(uid)
            seen = {}
            for pair in pairs:
                if seen.setdefault(pair['name'], pair['unit']) != pair['unit']:
                    raise ValueError(f'{path}: pair name {pair["name"]!r} of unit {pair["unit"]!r} is already used by '
                                     f'unit {seen[pair["name"]]!r}; names must be unique in the set.')
        self._commit(
            dict(self._manifest, pairs=pairs, units_finished=units, complete=False, **{UNIT_SOURCES_KEY: sources}))
        kept = {p['name'] for p in pairs}
        self._remove_pair_files(n for n in replaced if n not in kept)
        for _, path in shards:
            os.remove(path)
        get_root_logger().info(f'Merged {len(shards)} shard(s) into {self.manifest_path}: {len(merged)} unit(s).')
        return merged

    def finalize(self, extra=None):
        """Mark the set complete, merge ``extra`` (top-level fields stored JSON-safe, e.g. final metrics) into the
        manifest and write it atomically; returns a copy of the final manifest (a complete set is left untouched when
        ``extra`` is empty).

        Raises:
            ValueError: When ``extra`` is not a dict or overrides a field of the format.
            RuntimeError: Called on a shard writer.
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

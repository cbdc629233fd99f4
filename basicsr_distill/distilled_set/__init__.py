"""The on-disk format of a distilled super-resolution dataset (the only package that knows it).

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
``{'name', 'unit', 'hr_shape', 'lr_shape', 'sha256', **info}``, where ``sha256`` is ``{'hr', 'lr', 'lr_float'}``:
the SHA-256 (hex) of the bytes the writer wrote to each file; sets of format_version 1 have none, and reading them
logs a note once), plus whatever :meth:`DistilledSetWriter.finalize` merges.
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

Integrity: :func:`validate_distilled_set` (what ``DistilledPairedDataset`` runs at start-up by default) reads the
first and last bytes of each file; :func:`verify_distilled_set` (``verify: full``, ``scripts/verify_distilled.py``)
checks every file against its recorded SHA-256 and decodes it, listing every bad file.

Modules: :mod:`~basicsr_distill.distilled_set.layout` (names, constants, paths of the layout),
:mod:`~basicsr_distill.distilled_set.manifest` (the manifest and shards, options hash, versions),
:mod:`~basicsr_distill.distilled_set.validate`, :mod:`~basicsr_distill.distilled_set.verify`,
:mod:`~basicsr_distill.distilled_set.reader`,
:mod:`~basicsr_distill.distilled_set.writer` (:class:`DistilledSetWriter`, shard merge included) and
:mod:`~basicsr_distill.distilled_set.lmdb`. Every name is importable from this package, as before the split; the
atomic writes go through :mod:`basicsr_distill.utils.file_io`.
"""

# The private names of the former single module stay importable from here (tests and tools may use them).
from basicsr_distill.distilled_set.layout import (_FORBIDDEN_NAME_SUFFIXES, _NAME_RE, _SHARD_RE, _TMP_PREFIX,
                                                  FORMAT_NAME, FORMAT_VERSION, HR_DIR, HR_LMDB, LMDB_SOURCE_NAME,
                                                  LR_DIR, LR_FLOAT_DIR, LR_FOR_TRAINING, LR_LMDB, MANIFEST_NAME,
                                                  META_INFO_NAME, PAIR_KINDS, SHARD_FORMAT_NAME, _check_name,
                                                  _read_meta_info_names, _tmp_path, _unit_id, check_source_name,
                                                  lmdb_paths, meta_info_text, pair_paths, pending_shards, shard_path)
from basicsr_distill.distilled_set.lmdb import make_distilled_lmdb
from basicsr_distill.distilled_set.manifest import (_MANIFEST_RESERVED, _PAIR_RESERVED, _REQUIRED_FIELDS,
                                                    HASH_IGNORED_KEYS, PAIR_HASH_KEY, UNIT_SOURCES_KEY,
                                                    _check_manifest_consistency, _diff_paths, _load_json, _now,
                                                    _write_bytes_atomic, _write_json_atomic, collect_versions,
                                                    file_sha256, options_hash, read_manifest, read_shard, sha256_hex,
                                                    to_jsonable, write_meta_info)
from basicsr_distill.distilled_set.reader import (check_pixel_values, decode_npy, decode_png, load_pair, read_npy_rgb,
                                                  read_png_rgb)
from basicsr_distill.distilled_set.validate import (_PNG_IEND, _PNG_SIGNATURE, _pair_file_problem, incomplete_problem,
                                                    validate_distilled_lmdb, validate_distilled_set)
from basicsr_distill.distilled_set.verify import (VERIFY_MODES, NotADistilledSetError, check_sha256, content_problems,
                                                  lmdb_hashes, verification_message, verify_distilled_lmdb,
                                                  verify_distilled_set)
from basicsr_distill.distilled_set.writer import DistilledSetWriter, _encode_npy, _encode_png, _to_uint8

__all__ = [
    'check_source_name', 'FORMAT_NAME', 'FORMAT_VERSION', 'MANIFEST_NAME', 'META_INFO_NAME', 'HR_DIR', 'LR_DIR',
    'LR_FLOAT_DIR', 'HR_LMDB', 'LR_LMDB', 'LMDB_SOURCE_NAME', 'LR_FOR_TRAINING', 'SHARD_FORMAT_NAME',
    'HASH_IGNORED_KEYS', 'to_jsonable', 'options_hash', 'collect_versions', 'pair_paths', 'lmdb_paths',
    'meta_info_text', 'write_meta_info', 'read_manifest', 'shard_path', 'pending_shards', 'read_shard',
    'validate_distilled_set', 'validate_distilled_lmdb', 'incomplete_problem', 'load_pair', 'check_pixel_values',
    'decode_png', 'decode_npy', 'read_png_rgb', 'read_npy_rgb', 'DistilledSetWriter', 'make_distilled_lmdb',
    'PAIR_KINDS', 'PAIR_HASH_KEY', 'UNIT_SOURCES_KEY', 'file_sha256', 'sha256_hex', 'VERIFY_MODES',
    'NotADistilledSetError', 'check_sha256', 'content_problems', 'lmdb_hashes', 'verification_message',
    'verify_distilled_set', 'verify_distilled_lmdb'
]

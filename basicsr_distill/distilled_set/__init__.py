"""The on-disk format of a distilled SR dataset, the only package that knows it (docs/DistilledSetFormat.md).

Every method writes its result through :class:`DistilledSetWriter`, and every reader (``DistilledPairedDataset``, the
lmdb converter, the evaluation scripts) goes through this package::

    root/
    ├── hr/<name>.png          8-bit RGB PNG, (scale*h, scale*w, 3)
    ├── lr/<name>.png          8-bit RGB PNG, (h, w, 3)
    ├── lr_float/<name>.npy    float32 RGB [0, 1] copy of the LR, (h, w, 3) (lossless)
    ├── meta_info.txt          ``<name>.png (H,W,3)`` per pair, for BasicSR's PairedImageDataset
    ├── distill.json           the manifest, the commit record: a unit counts once it lists it
    ├── distill.rank<k>.json   only while a multi-process run is unfinished: rank k's shard
    ├── hr.lmdb/, lr.lmdb/     optional (:func:`make_distilled_lmdb`)

Every file is written atomically (:mod:`basicsr_distill.utils.file_io`). Modules: ``layout`` (names and paths),
``manifest`` (manifest, shards, options hash), ``validate`` (start-up check), ``verify`` (SHA-256 and decoding),
``reader``, ``writer`` (:class:`DistilledSetWriter`, shard merge) and ``lmdb``; every public name is importable from
here.
"""

from basicsr_distill.distilled_set.layout import (FORMAT_NAME, FORMAT_VERSION, HR_DIR, HR_LMDB, LMDB_SOURCE_NAME,
                                                  LR_DIR, LR_FLOAT_DIR, LR_FOR_TRAINING, LR_LMDB, MANIFEST_NAME,
                                                  META_INFO_NAME, PAIR_KINDS, SHARD_FORMAT_NAME, check_source_name,
                                                  dataset_size, lmdb_paths, meta_info_text, pair_paths, pending_shards,
                                                  shard_path)
from basicsr_distill.distilled_set.lmdb import make_distilled_lmdb
from basicsr_distill.distilled_set.manifest import (HASH_IGNORED_KEYS, PAIR_HASH_KEY, UNIT_SOURCES_KEY,
                                                    collect_versions, file_sha256, options_hash, read_manifest,
                                                    read_shard, sha256_hex, to_jsonable, write_meta_info)
from basicsr_distill.distilled_set.reader import (check_pixel_values, decode_npy, decode_png, load_pair, read_npy_rgb,
                                                  read_png_rgb)
from basicsr_distill.distilled_set.validate import incomplete_problem, validate_distilled_lmdb, validate_distilled_set
from basicsr_distill.distilled_set.verify import (VERIFY_MODES, NotADistilledSetError, check_sha256, content_problems,
                                                  lmdb_hashes, verification_message, verify_distilled_lmdb,
                                                  verify_distilled_set)
from basicsr_distill.distilled_set.writer import DistilledSetWriter

__all__ = [
    'check_source_name', 'dataset_size', 'FORMAT_NAME', 'FORMAT_VERSION', 'MANIFEST_NAME', 'META_INFO_NAME', 'HR_DIR',
    'LR_DIR', 'LR_FLOAT_DIR', 'HR_LMDB', 'LR_LMDB', 'LMDB_SOURCE_NAME', 'LR_FOR_TRAINING', 'SHARD_FORMAT_NAME',
    'HASH_IGNORED_KEYS', 'to_jsonable', 'options_hash', 'collect_versions', 'pair_paths', 'lmdb_paths',
    'meta_info_text', 'write_meta_info', 'read_manifest', 'shard_path', 'pending_shards', 'read_shard',
    'validate_distilled_set', 'validate_distilled_lmdb', 'incomplete_problem', 'load_pair', 'check_pixel_values',
    'decode_png', 'decode_npy', 'read_png_rgb', 'read_npy_rgb', 'DistilledSetWriter', 'make_distilled_lmdb',
    'PAIR_KINDS', 'PAIR_HASH_KEY', 'UNIT_SOURCES_KEY', 'file_sha256', 'sha256_hex', 'VERIFY_MODES',
    'NotADistilledSetError', 'check_sha256', 'content_problems', 'lmdb_hashes', 'verification_message',
    'verify_distilled_set', 'verify_distilled_lmdb'
]

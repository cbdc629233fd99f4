"""lmdb copies of a distilled set (``hr.lmdb`` / ``lr.lmdb``, keys = pair names)."""
from os import path as osp

from basicsr_distill.distilled_set.layout import HR_DIR, LMDB_SOURCE_NAME, LR_DIR, MANIFEST_NAME, lmdb_paths
from basicsr_distill.distilled_set.manifest import PAIR_HASH_KEY, _write_json_atomic, sha256_hex
from basicsr_distill.distilled_set.validate import validate_distilled_set
from basicsr_distill.distilled_set.verify import verification_message, verify_distilled_set
from basicsr_distill.utils.file_io import atomic_path


def make_distilled_lmdb(root, compress_level=1, multiprocessing_read=False, n_thread=8):
    """Convert a distilled set's ``hr/`` and ``lr/`` PNGs to ``hr.lmdb`` / ``lr.lmdb`` (keys = pair names).

    Uses BasicSR's ``make_lmdb_from_imgs``; each database is built under a temporary name and renamed when done. The
    PNGs are verified first (:func:`verify_distilled_set`), so a damaged file is not copied. Each database's
    ``distill_source.json`` records the manifest state and the SHA-256 of every stored value (BasicSR re-encodes the
    PNGs, so these differ from the files'). The float LR copy is not converted.

    Args:
        root (str): Distilled-set folder.
        compress_level (int): PNG compression level of the stored images. Default: 1.
        multiprocessing_read (bool): Read images with a process pool first. Default: False.
        n_thread (int): Processes for ``multiprocessing_read``. Default: 8.

    Returns:
        dict: ``{'hr': path of hr.lmdb, 'lr': path of lr.lmdb}``.

    Raises:
        FileExistsError: When ``hr.lmdb`` or ``lr.lmdb`` already exists (remove it yourself to rebuild).
        ValueError: When the set is invalid or empty, or a PNG is damaged (every bad file named).
    """
    import lmdb

    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    manifest = validate_distilled_set(root)
    if not manifest['pairs']:
        raise ValueError(f'{osp.join(root, MANIFEST_NAME)} lists no pairs; nothing to convert.')
    targets = lmdb_paths(root)
    for path in targets.values():
        if osp.exists(path):
            raise FileExistsError(f'{path} already exists; remove it to rebuild the lmdb copies.')
    report = verify_distilled_set(root, kinds=('hr', 'lr'), lmdb=False)
    if report['problems']:
        raise ValueError(verification_message(report, 'before the lmdb conversion') + ' Nothing was converted.')
    names = [p['name'] for p in manifest['pairs']]
    for kind, sub in (('hr', HR_DIR), ('lr', LR_DIR)):
        files = [f'{n}.png' for n in names]
        # BasicSR estimates the map size from the first image only (too small for small or uneven sets); the map
        # is a sparse reservation, so be generous
        map_size = max(64 << 20, 10 * sum(osp.getsize(osp.join(root, sub, f)) for f in files))
        with atomic_path(targets[kind]) as tmp:  # a temporary folder next to it, removed whole on failure
            make_lmdb_from_imgs(
                osp.join(root, sub),
                tmp,
                files,
                names,
                compress_level=compress_level,
                multiprocessing_read=multiprocessing_read,
                n_thread=n_thread,
                map_size=map_size)
            env = lmdb.open(tmp, readonly=True, lock=False, readahead=False)
            try:
                with env.begin(write=False) as txn:
                    hashes = {n: sha256_hex(bytes(txn.get(n.encode('ascii')))) for n in names}
            finally:
                env.close()
            source = {'manifest_updated': manifest.get('updated'), 'num_pairs': len(names), PAIR_HASH_KEY: hashes}
            _write_json_atomic(osp.join(tmp, LMDB_SOURCE_NAME), source)
    return targets

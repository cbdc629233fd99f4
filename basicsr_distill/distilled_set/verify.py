"""Full verification of a distilled set: every file checked against the SHA-256 its manifest records, and decoded.

Unlike the start-up check (:func:`~basicsr_distill.distilled_set.validate.validate_distilled_set`, first and last
bytes only), this reads every byte, lists every bad file, and only reads (docs/DistilledSetFormat.md). The lmdb
copies are checked against the hashes in their ``distill_source.json``.
"""
import io
import numpy as np
import time
from os import path as osp

from basicsr_distill.distilled_set.layout import (FORMAT_NAME, FORMAT_VERSION, LMDB_SOURCE_NAME, MANIFEST_NAME,
                                                  PAIR_KINDS, lmdb_paths, pair_paths)
from basicsr_distill.distilled_set.manifest import (_SHA256_RE, PAIR_HASH_KEY, _check_manifest_consistency, _load_json,
                                                    read_manifest, sha256_hex)
from basicsr_distill.distilled_set.reader import decode_npy, decode_png
from basicsr_distill.distilled_set.validate import _content_problem, _meta_info_problem

# Values of DistilledPairedDataset's option ``verify``: 'quick' (default) checks the first and last bytes of every
# file at start-up; 'full' runs verify_distilled_set at start-up and checks the hash of every file read in training.
VERIFY_MODES = ('quick', 'full')


class NotADistilledSetError(ValueError):
    """A ``distill.json`` of another format or a newer format_version: nothing to verify."""


def lmdb_hashes(root):
    """SHA-256 of the values of a set's lmdb copies, as :func:`make_distilled_lmdb` recorded them.

    Args:
        root (str): Distilled-set folder.

    Returns:
        dict: ``{'hr': {pair name: 64 hex digits}, 'lr': {...}}``; empty for a database without the record.

    Raises:
        ValueError: A ``distill_source.json`` that is not valid JSON or whose ``sha256`` is malformed (named).
    """
    found = {}
    for kind, db_path in lmdb_paths(root).items():
        path = osp.join(db_path, LMDB_SOURCE_NAME)
        hashes = _load_json(path).get(PAIR_HASH_KEY, {}) if osp.isfile(path) else {}
        if not isinstance(hashes, dict) or not all(isinstance(v, str) and _SHA256_RE.match(v) for v in hashes.values()):
            raise ValueError(f'{path}: {PAIR_HASH_KEY!r} must map pair names to 64 lowercase hex digits.')
        found[kind] = hashes
    return found


def check_sha256(content, expected, where, record):
    """Raise ``ValueError`` naming ``where`` (file or lmdb key) and ``record`` (the file recording the hash) when
    ``content`` does not have the SHA-256 ``expected``; None checks nothing (format_version 1).
    """
    if expected is None:
        return
    actual = sha256_hex(content)
    if actual != expected:
        raise ValueError(f'{where}: its SHA-256 ({actual[:16]}...) is not the one {record} records for it '
                         f'({expected[:16]}...): the file changed after the set was written (found by verify: full '
                         'while reading it). Restore it from a copy or write the set again; '
                         'scripts/verify_distilled.py lists every changed file.')


def content_problems(content, kind, shape, expected=None):
    """Problems of the bytes of one pair file or lmdb value (structure, SHA-256, decoding, shape, range); empty if good.

    ``kind`` is ``'hr'``, ``'lr'`` (PNG) or ``'lr_float'`` (npy); ``shape`` the recorded (H, W, 3); ``expected`` the
    recorded SHA-256 (None: not checked).
    """
    problems = []
    structure = _content_problem(io.BytesIO(content), len(content), kind, shape)
    if structure:
        problems.append(structure)
    if expected is not None and sha256_hex(content) != expected:
        problems.append(f'its SHA-256 is not the one recorded when it was written (the file changed since; '
                        f'{len(content)} bytes)')
    try:
        img = decode_npy(content, kind) if kind == 'lr_float' else decode_png(content, kind)
    except Exception as err:  # any failure to decode is a problem of the file
        problems.append('does not decode as an npy array' if kind == 'lr_float' else 'does not decode as an image')
        if kind == 'lr_float' and not structure:
            problems[-1] += f' ({err})'
        return problems
    if list(img.shape) != [int(v) for v in shape]:
        problems.append(f'decodes to shape {tuple(img.shape)}, the manifest says {tuple(shape)}')
    elif kind == 'lr_float' and not (np.all(np.isfinite(img)) and img.min() >= 0 and img.max() <= 1):
        problems.append('holds values outside [0, 1] or not finite')
    return problems


def _new_report(root, manifest=None):
    return {'root': root, 'manifest': manifest, 'problems': [], 'files': 0, 'bytes': 0, 'unhashed': 0, 'lmdb': []}


def _merge(report, part):
    for key in ('files', 'bytes', 'unhashed'):
        report[key] += part[key]
    report['problems'].extend(part['problems'])
    report['lmdb'].extend(part['lmdb'])


def _read_manifest_or_problem(root):
    """``(manifest, None)``, or ``(None, problem)`` for a damaged manifest of the format.

    Raises:
        FileNotFoundError: ``root`` is not a folder or holds no ``distill.json``.
        NotADistilledSetError: Its ``distill.json`` is of another format or of a newer format_version.
    """
    if not osp.isdir(root):
        raise FileNotFoundError(f'{root} is not a folder (a distilled set is a folder with {MANIFEST_NAME}, hr/, lr/ '
                                'and lr_float/).')
    manifest_path = osp.join(root, MANIFEST_NAME)
    try:
        manifest = read_manifest(root)
    except ValueError as err:
        try:
            head = _load_json(manifest_path)
        except ValueError:  # not valid JSON: a damaged manifest
            return None, str(err)
        version = head.get('format_version') if isinstance(head, dict) else None
        newer = isinstance(version, int) and version > FORMAT_VERSION
        if not isinstance(head, dict) or head.get('format') != FORMAT_NAME or newer:
            raise NotADistilledSetError(str(err)) from err
        return None, str(err)
    try:
        _check_manifest_consistency(manifest, manifest_path)
    except ValueError as err:
        return None, str(err)
    return manifest, None


def verify_distilled_set(root, kinds=PAIR_KINDS, lmdb=None):
    """Check every file of a distilled set against its recorded SHA-256 and decode it; list every bad file.

    Each pair file must exist, pass the structural check, match its recorded SHA-256 (format_version 1: decoded only,
    counted in ``unhashed``) and decode to the recorded shape (npy: values in [0, 1]); ``meta_info.txt`` must list the
    manifest's pairs. Nothing on disk changes.

    Args:
        root (str): Distilled-set folder.
        kinds (Sequence[str]): The files of each pair to check, of ``('hr', 'lr', 'lr_float')``. Default: all.
        lmdb (bool | None): Also check the lmdb copies: True, False, or None when ``hr.lmdb`` or ``lr.lmdb`` exists.
            Default: None.

    Returns:
        dict: ``root``; ``manifest`` (None when damaged); ``problems``: ``(path, line)`` per bad file, the line naming
        the file, pair and every problem; ``files``, ``bytes`` read; ``unhashed``; ``lmdb``: databases checked;
        ``seconds``. Intact when ``problems`` is empty.

    Raises:
        FileNotFoundError: ``root`` is not a folder or holds no ``distill.json``.
        NotADistilledSetError: (a ``ValueError``) its ``distill.json`` is of another format or a newer format_version.
        ValueError: An unknown kind.
    """
    start = time.perf_counter()
    unknown = [k for k in kinds if k not in PAIR_KINDS]
    if unknown:
        raise ValueError(f'kinds must be of {PAIR_KINDS}, got {unknown}.')
    manifest, problem = _read_manifest_or_problem(root)
    report = _new_report(root, manifest)
    if manifest is None:
        report['problems'].append((osp.join(root, MANIFEST_NAME), problem))
        report['seconds'] = time.perf_counter() - start
        return report
    for pair in manifest['pairs']:
        name, hashes = pair['name'], pair.get(PAIR_HASH_KEY) or {}
        for kind in kinds:
            path = pair_paths(root, name)[kind]
            shape = pair['hr_shape' if kind == 'hr' else 'lr_shape']
            try:
                with open(path, 'rb') as f:
                    content = f.read()
            except FileNotFoundError:
                report['problems'].append((path, f'{path} (pair {name!r}): is missing'))
                continue
            except OSError as err:
                report['problems'].append((path, f'{path} (pair {name!r}): cannot be read ({err})'))
                continue
            report['files'] += 1
            report['bytes'] += len(content)
            report['unhashed'] += kind not in hashes
            reasons = content_problems(content, kind, shape, hashes.get(kind))
            if reasons:
                report['problems'].append((path, f'{path} (pair {name!r}): {"; ".join(reasons)}'))
    meta_problem = _meta_info_problem(root, manifest)
    if meta_problem:
        report['problems'].append((osp.join(root, 'meta_info.txt'), meta_problem))
    if lmdb or (lmdb is None and any(osp.exists(p) for p in lmdb_paths(root).values())):
        _merge(report, verify_distilled_lmdb(root, manifest))
    report['seconds'] = time.perf_counter() - start
    return report


def verify_distilled_lmdb(root, manifest=None, read=None):
    """Check every value of a set's ``hr.lmdb`` / ``lr.lmdb`` against its recorded SHA-256 and decode it.

    ``manifest`` is read when None. ``read(kind, name)`` returns the value of key ``name`` in the ``kind`` database or
    None; None opens each database read-only (a reader holding it open passes its own: py-lmdb opens one once per
    process). Returns a report as :func:`verify_distilled_set`, lines naming the lmdb key and database.
    """
    start = time.perf_counter()
    manifest = read_manifest(root) if manifest is None else manifest
    report = _new_report(root, manifest)
    try:
        hashes = lmdb_hashes(root)
    except ValueError as err:
        report['problems'].append((root, str(err)))
        hashes = {'hr': {}, 'lr': {}}
    for kind, db_path in lmdb_paths(root).items():
        if not osp.isfile(osp.join(db_path, 'data.mdb')):
            report['problems'].append((db_path, f'{db_path}: is missing (no data.mdb)'))
            continue
        report['lmdb'].append(db_path)
        env = txn = None
        if read is None:
            import lmdb
            try:
                env = lmdb.open(db_path, readonly=True, lock=False, readahead=False)
            except lmdb.Error as err:
                report['problems'].append((db_path, f'{db_path}: cannot be opened as an lmdb ({err})'))
                continue
            txn = env.begin(write=False)
        try:
            for pair in manifest['pairs']:
                name = pair['name']
                content = txn.get(name.encode('ascii')) if txn is not None else read(kind, name)
                where = f'key {name!r} of {db_path}'
                if content is None:
                    report['problems'].append((where, f'{where}: is missing'))
                    continue
                content = bytes(content)
                report['files'] += 1
                report['bytes'] += len(content)
                report['unhashed'] += name not in hashes[kind]
                reasons = content_problems(content, kind, pair[f'{kind}_shape'], hashes[kind].get(name))
                if reasons:
                    report['problems'].append((where, f'{where}: {"; ".join(reasons)}'))
        finally:
            if env is not None:
                txn.abort()
                env.close()
    report['seconds'] = time.perf_counter() - start
    return report


def verification_message(report, what='verify: full'):
    """One error text naming every bad file of a verification report ('' when intact), and what to do.

    Args:
        report (dict): A report of :func:`verify_distilled_set` or :func:`verify_distilled_lmdb`.
        what (str): The check, for the first line. Default: 'verify: full'.
    """
    problems = report['problems']
    if not problems:
        return ''
    lines = [
        f'Distilled set {report["root"]} is not intact ({what}): {len(problems)} bad file(s) of '
        f'{report["files"]} read:'
    ]
    lines.extend(f'  {line}' for _, line in problems)
    lines.append('Restore these files from a copy or write the set again (scripts/verify_distilled.py '
                 f'{report["root"]} lists them).')
    return '\n'.join(lines)

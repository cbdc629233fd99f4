"""The one family of atomic writers of the project.

Every file the project writes for a user (distilled pairs, manifests, shards, stage files, training states, benchmark
cells and reports) goes through :func:`atomic_path`: the data is written to a temporary name in the same folder
(``.distill-tmp-<pid>-<random>-<name>``), flushed and fsync'ed, then moved into place with ``os.replace``. A file
with its final name is therefore never half written, whatever kills the process; a temporary left by a killed writer
starts with :data:`TMP_PREFIX`, so readers and cleaners can recognise it (:func:`is_tmp_name`).

Two writers keep another temporary name through ``tmp=``: BasicSR training states and the Minimax-SR stage-2 file
(``<path>.tmp``: BasicSR's ``--auto_resume`` parses every name in ``training_states``) and the Minimax-SR stage-1
selection (``.<name>.<random>.tmp``, which its writer cleans itself).
"""
import contextlib
import errno
import json
import os
import os.path as osp
import shutil
import uuid

TMP_PREFIX = '.distill-tmp-'
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS)  # raised naming no file


def tmp_path(final_path):
    """Temporary path next to ``final_path`` (same folder, so ``os.replace`` is atomic).

    Args:
        final_path (str): The file (or folder) that will be written.

    Returns:
        str: ``<folder>/.distill-tmp-<pid>-<8 hex>-<basename>``.
    """
    folder, base = osp.split(final_path)
    return osp.join(folder, f'{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{base}')


def is_tmp_name(name):
    """Whether ``name`` (a base name) is a temporary written by :func:`tmp_path`."""
    return name.startswith(TMP_PREFIX)


def remove_stale_tmps(folder, base=None):
    """Remove temporaries left in ``folder`` by writers killed before their ``os.replace``.

    Args:
        folder (str): Folder to clean (missing: nothing to do).
        base (str | None): Only temporaries of this final base name; None: every temporary in the folder.

    Returns:
        list[str]: The removed paths. Call it only where a single writer owns the folder.
    """
    if not osp.isdir(folder):
        return []
    removed = []
    for name in os.listdir(folder):
        path = osp.join(folder, name)
        if is_tmp_name(name) and (base is None or name.endswith(f'-{base}')) and osp.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path, make_parents=False, tmp=None):
    """Yield a temporary path to write; on success it replaces ``path``, on any failure it is removed.

    The caller writes the temporary file (with any library: ``torch.save``, ``np.save`` to an open file, ...), or
    creates a folder there (e.g. an lmdb database; ``path`` must not exist then: ``os.replace`` does not replace a
    non-empty folder). A file is fsync'ed before the replace; a folder left by a failure is removed whole.

    Args:
        path (str): Final path.
        make_parents (bool): Create the parent folder first. Default: False.
        tmp (str | None): Temporary path to use instead of :func:`tmp_path` (same folder), where a reader of the
            folder needs another pattern (BasicSR's ``--auto_resume`` parses every name in ``training_states``).
            Default: None.

    Yields:
        str: The temporary path.

    Raises:
        OSError: Writing or replacing failed; ``path`` is untouched and the temporary removed. An error of a write,
            flush or fsync (a full disk: ``ENOSPC``; ``EDQUOT``, ``EFBIG``, ``EIO``, ``EROFS``), which Python raises
            naming no file, gets ``path`` as its ``filename`` (so does an error naming the temporary alone), so
            that its message names the file and the callers (e.g.
            :meth:`basicsr_distill.utils.run_lock.RunGuard.explain_write_error`) know which folder failed. Any
            exception raised inside the block propagates the same way.
    """
    if make_parents:
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = tmp or tmp_path(path)
    try:
        yield tmp
        if osp.isfile(tmp):
            with open(tmp, 'rb+') as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if osp.isdir(tmp) and not osp.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif osp.lexists(tmp):
            with contextlib.suppress(OSError):  # keep the original error (a removal fails on a read-only folder)
                os.remove(tmp)
        named = isinstance(err, OSError) and err.filename2 is None and err.filename == tmp
        if named or isinstance(err, OSError) and err.filename is None and err.errno in _WRITE_ERRNOS:
            err.filename = path
        raise


def write_bytes_atomic(path, data, make_parents=False):
    """Write ``data`` (bytes) to ``path`` atomically (see :func:`atomic_path`). Returns ``path``."""
    with atomic_path(path, make_parents) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)
    return path


def write_text_atomic(path, text, make_parents=True):
    """Write ``text`` as UTF-8 (no newline translation) to ``path`` atomically. Returns ``path``."""
    return write_bytes_atomic(path, text.encode('utf-8'), make_parents)


def write_json_atomic(path, obj, make_parents=False, **dump_kwargs):
    """Write ``obj`` as standard JSON (``allow_nan=False``) plus a newline to ``path`` atomically.

    Args:
        path (str): Output file.
        obj: JSON-serialisable object.
        make_parents (bool): Create the parent folder first.
        **dump_kwargs: Passed to ``json.dumps`` (e.g. ``indent``).

    Raises:
        ValueError: ``obj`` holds NaN or infinity (nothing is written).
    """
    dump_kwargs.setdefault('allow_nan', False)
    return write_bytes_atomic(path, (json.dumps(obj, **dump_kwargs) + '\n').encode('utf-8'), make_parents)


def torch_save_atomic(path, obj, tmp=None):
    """``torch.save(obj)`` to ``path`` atomically (training states, stage files); ``tmp`` as in :func:`atomic_path`.

    The temporary is opened by Python and ``torch.save`` writes to the open file: given a path, torch writes with its
    own C++ writer, whose failures (a full disk, a folder that became unwritable) are a ``RuntimeError`` such as
    ``[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598``, naming neither the file nor the cause;
    Python's are an ``OSError`` with its ``errno``, named by :func:`atomic_path`.

    Returns:
        str: ``path``.

    Raises:
        OSError: Writing failed (named; ``path`` is untouched).
    """
    import torch
    with atomic_path(path, tmp=tmp) as tmp:
        with open(tmp, 'wb') as f:
            try:
                torch.save(obj, f)
            except RuntimeError as err:  # torch ends the archive after a failed write, which hides the OSError
                if isinstance(err.__context__, OSError):
                    raise err.__context__ from None
                raise
    return path

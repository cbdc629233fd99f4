"""The one family of atomic writers of the project.

Every file written for a user goes through :func:`atomic_path`: written to a temporary name in the same folder
(``.distill-tmp-<pid>-<random>-<name>``, :func:`is_tmp_name`), flushed, fsync'ed, then moved into place with
``os.replace``, so a file with its final name is never half written. ``tmp=`` picks another temporary name where a
reader of the folder needs it (BasicSR's ``--auto_resume`` parses every name in ``training_states``).
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
    """Temporary path next to ``final_path`` (same folder): ``<folder>/.distill-tmp-<pid>-<8 hex>-<basename>``."""
    folder, base = osp.split(final_path)
    return osp.join(folder, f'{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{base}')


def is_tmp_name(name):
    """Whether ``name`` (a base name) is a temporary written by :func:`tmp_path`."""
    return name.startswith(TMP_PREFIX)


def remove_stale_tmps(folder, base=None):
    """Remove and return the temporaries killed writers left in ``folder`` (of final name ``base``, or all for None).

    Call it only where one writer owns the folder; a missing folder is nothing to do.
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
    """Yield a temporary path to write (a file, or a folder if ``path`` does not exist); on success it replaces
    ``path``, on failure it is removed.

    Args:
        path (str): Final path.
        make_parents (bool): Create the parent folder first. Default: False.
        tmp (str | None): Temporary path in the same folder instead of :func:`tmp_path`. Default: None.

    Yields:
        str: The temporary path.

    Raises:
        OSError: Writing or replacing failed; ``path`` is untouched and the temporary removed. Errors naming no file
            or only the temporary (a full disk: ``ENOSPC``, ``EDQUOT``, ``EIO``, ...) get ``path`` as ``filename``.
            Any exception inside the block propagates the same way.
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
    """Write ``obj`` as standard JSON plus a newline to ``path`` atomically; ``**dump_kwargs`` go to ``json.dumps``.

    Raises:
        ValueError: ``obj`` holds NaN or infinity (nothing is written).
    """
    dump_kwargs.setdefault('allow_nan', False)
    return write_bytes_atomic(path, (json.dumps(obj, **dump_kwargs) + '\n').encode('utf-8'), make_parents)


def torch_save_atomic(path, obj, tmp=None):
    """``torch.save(obj)`` to ``path`` atomically (``tmp`` as in :func:`atomic_path`); returns ``path``.

    Torch writes to an open Python file, so a failure is an ``OSError`` with its errno, naming ``path`` (untouched).
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

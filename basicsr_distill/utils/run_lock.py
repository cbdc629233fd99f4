"""One run per output folder: locks, write access checked at start-up, and what a failed start leaves
(docs/Robustness.md).

:func:`guarded_train_pipeline` hooks three names ``basicsr.train`` looks up: ``parse_options`` (apply a
``--force_yml`` seed, which BasicSR applies after seeding; rank 0 checks and locks every output folder before BasicSR
reads a state or renames anything, other ranks receive its outcome), ``make_exp_dirs`` (archive an existing
experiment folder under its lock) and ``build_model`` (the end of the start-up: a start failing before removes the
folders it created when they hold only start-up files).

A lock is ``fcntl.flock`` on ``<folder>/.distill.lock`` holding ``{"pid", "host", "start"}``; the kernel releases it
when its process dies, so a lock file whose flock can be taken is stale and taken over (logged). Local file systems
and NFS v4.
"""
import errno
import fcntl
import json
import os
import os.path as osp
import shutil
import socket
import sys
import time

from basicsr.utils import get_time_str
from basicsr_distill.utils.file_io import is_tmp_name
from basicsr_distill.utils.options import apply_forced_seed, check_experiment_name, check_path_keys

LOCK_NAME = '.distill.lock'


class RunLockedError(RuntimeError):
    """An output folder is locked by another live run (the message names the folder, the option and the holder)."""


def is_writable(path):
    """Whether this process may create entries in the existing folder ``path`` (a hook for tests, run as root)."""
    return os.access(path, os.W_OK | os.X_OK)


def holder_text(info):
    """``'process <pid> on host <host>, started <start>'`` from a lock file's JSON (``info``), or a generic text."""
    if not isinstance(info, dict) or 'pid' not in info:
        return 'another process (its lock file is empty or being written)'
    return f'process {info.get("pid")} on host {info.get("host", "?")}, started {info.get("start", "?")}'


def _read_info(fd):
    """The JSON of an open lock file, or None (empty or not JSON)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        return json.loads(data.decode('utf-8')) if data.strip() else None
    except (OSError, ValueError):
        return None


def _folder_error(err, folder, what, action):
    """``err`` (an OSError) again, naming ``folder`` and ``what`` (the option)."""
    message = (f'Cannot {action} output folder {folder} ({what}): {err.strerror or err}. Make it writable or point '
               'the option at another folder. Nothing was computed.')
    try:
        return type(err)(message)
    except TypeError:
        return OSError(message)


class FolderLock:
    """Exclusive lock of one output folder for one run.

    Args:
        folder (str): The folder (created by :meth:`acquire` when missing).
        what (str): The option it comes from, for messages (``'option path.distilled_root'``).
        hint (str): What to do when another run holds it, for the message.
    """

    def __init__(self, folder, what, hint=''):
        self.folder = osp.abspath(folder)
        self.what = what
        self.hint = hint
        self.path = osp.join(self.folder, LOCK_NAME)
        self.fd = None
        self.took_over = None  # the stale holder (its JSON, or {}) when acquire took over a lock file

    def acquire(self):
        """Create the folder if needed and lock it; returns self.

        Raises:
            RunLockedError: A live process holds the lock (names the folder, the option and the holder).
            OSError: The folder or its lock file cannot be created (named, with the option).
        """
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as err:
            raise _folder_error(err, self.folder, self.what, 'create') from err
        for _ in range(100):  # a holder that releases unlinks its file: lock the file the path names now
            existed = osp.exists(self.path)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise _folder_error(err, self.folder, self.what, 'write to') from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                info = _read_info(fd)
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise _folder_error(err, self.folder, self.what, 'lock') from err
                raise RunLockedError(f'Output folder {self.folder} ({self.what}) is in use by another run: '
                                     f'{holder_text(info)} (lock file {self.path}). {self.hint}'.rstrip()) from None
            try:
                same = osp.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = _read_info(fd)
            if existed:
                self.took_over = old or {}
            info = {'pid': os.getpid(), 'host': socket.gethostname(), 'start': time.strftime('%Y-%m-%d %H:%M:%S %z')}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + '\n').encode('utf-8'), 0)
            except OSError as err:
                os.close(fd)
                raise _folder_error(err, self.folder, self.what, 'write to') from err
            self.fd = fd
            return self
        raise RunLockedError(f'Could not lock {self.path}: its lock file keeps being replaced by other runs.')

    def takeover_text(self):
        """The log line of a stale lock taken over, or None."""
        if self.took_over is None:
            return None
        return (f'{self.folder} ({self.what}): took over the stale lock of {holder_text(self.took_over)}, which no '
                'longer holds it (the run was killed or crashed)')

    def release(self, moved_to=None):
        """Unlock: remove the lock file (under ``moved_to`` if the folder was renamed) and close it; quiet on errors."""
        if self.fd is None:
            return
        path = osp.join(moved_to, LOCK_NAME) if moved_to else self.path
        try:
            if osp.samestat(os.fstat(self.fd), os.stat(path)):
                os.remove(path)
        except OSError:
            pass  # gone, or its folder became read-only: the kernel drops the flock at close anyway
        os.close(self.fd)
        self.fd = None


def held_locks_under(folder, own=()):
    """``(lock file, holder text)`` of each lock under ``folder`` a live run holds (probed with a non-blocking
    ``flock``), skipping ``own`` (this process's).
    """
    own = {osp.abspath(p) for p in own}
    held = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not osp.islink(osp.join(dirpath, d))]
        if LOCK_NAME not in filenames:
            continue
        path = osp.abspath(osp.join(dirpath, LOCK_NAME))
        if path in own:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            held.append((path, holder_text(_read_info(fd))))
        finally:
            os.close(fd)
    return held


def check_not_in_use(folder, what, own=()):
    """Refuse to rename ``folder`` (``<folder>_archived_<time>``) when a live run holds a lock inside it.

    Raises:
        RunLockedError: Naming the lock file, its holder and ``what`` (the option).
    """
    held = held_locks_under(folder, own) if osp.isdir(folder) else []
    if held:
        path, holder = held[0]
        raise RunLockedError(f'Output folder {folder} ({what}) exists and would be archived (renamed), but a live run '
                             f'writes inside it: {holder} (lock file {path}). Wait for it to end or give this run '
                             'another name (option name, or --force_yml name=<other>). Nothing was moved.')


def _within(path, folder):
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _model_class(opt):
    from basicsr.utils.registry import MODEL_REGISTRY
    try:
        return MODEL_REGISTRY.get(opt.get('model_type'))
    except KeyError:
        return None


def output_folders(opt, root_path):
    """The output folders of a training run, as the models derive them.

    Args:
        opt (dict): Options parsed by BasicSR (``path.experiments_root`` set).
        root_path (str): The folder ``tb_logger/`` is written in.

    Returns:
        list[dict]: ``{'key', 'folder' (absolute), 'what' (option), 'hint' (for a refusal), 'lock' (bool)}`` for
        ``exp``, the model's own (a model class's ``run_output_folders(opt)``: ``distilled_root`` and ``work_dir``
        of the distillation models) and ``tb`` (when used).
    """
    name = opt['name']
    exp = opt['path']['experiments_root']
    folders = [{
        'key': 'exp',
        'folder': osp.abspath(exp),
        'what': f'the experiment folder of option name={name!r}',
        'hint': 'Wait for it to end, or give this run another name (option name, or --force_yml name=<other>).',
        'lock': True
    }]
    model_folders = getattr(_model_class(opt), 'run_output_folders', None)  # distillation models: their outputs
    if model_folders is not None:
        folders.extend(model_folders(opt))
    if opt['logger'].get('use_tb_logger') and 'debug' not in name:
        folders.append({
            'key': 'tb',
            'folder': osp.abspath(osp.join(root_path, 'tb_logger', name)),
            'what': 'tb_logger/<name> of option logger.use_tb_logger',
            'hint': '',
            'lock': False
        })
    return folders


def check_output_folder(folder, what):
    """Check that ``folder`` (absolute) can be written, or created, by this process; ``what`` names the option.

    Raises:
        NotADirectoryError: ``folder`` or one of its parents is a file.
        PermissionError: ``folder``, or the nearest existing parent, is not writable.
    """
    probe = folder
    while not osp.isdir(probe):
        if osp.lexists(probe):
            raise NotADirectoryError(f'Output folder {folder} ({what}) cannot be created: {probe} is a file, not a '
                                     'folder. Move it away or point the option at another folder. Nothing was '
                                     'computed.')
        parent = osp.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not is_writable(probe):
        where = 'is not writable' if probe == folder else f'cannot be created: {probe} is not writable'
        raise PermissionError(f'Output folder {folder} ({what}) {where} by this user. Fix its permissions or point '
                              'the option at another folder. Nothing was computed.')


def startup_leftover(path, opt_name=None, own_locks=()):
    """Whether the file ``path`` is one a start-up writes: own lock, temporary, option copy, log, tensorboard event,
    or an empty distilled set's manifest and meta_info.txt.
    """
    base = osp.basename(path)
    if base == LOCK_NAME:
        return path in own_locks
    if is_tmp_name(base) or base.startswith('events.out.tfevents.'):
        return True
    if base == opt_name or (base.startswith('train_') and base.endswith('.log')):
        return True
    if base == 'meta_info.txt':
        return osp.getsize(path) == 0
    if base == 'distill.json':
        try:
            with open(path, encoding='utf-8') as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            return False
        return isinstance(manifest, dict) and not manifest.get('pairs') and not manifest.get('units_finished')
    return False


def removable_tree(folder, opt_name=None, own_locks=()):
    """Whether every file under ``folder`` is a :func:`startup_leftover` (and there is no link)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        if any(osp.islink(osp.join(dirpath, d)) for d in dirnames):
            return False
        for name in filenames:
            path = osp.join(dirpath, name)
            if osp.islink(path) or not startup_leftover(path, opt_name, own_locks):
                return False
    return True


class RunGuard:
    """The locks and folder bookkeeping of one run of :func:`guarded_train_pipeline`.

    Args:
        opt (dict): BasicSR's parsed options.
        opt_file (str): The option file (its copy in the experiment folder is a start-up file).
        root_path (str): The CLI's root (``tb_logger/`` is under it).
    """

    def __init__(self, opt, opt_file, root_path):
        self.opt = opt
        self.opt_name = osp.basename(opt_file)
        self.rank = opt.get('rank', 0)
        self.world_size = opt.get('world_size', 1)
        self.folders = output_folders(opt, root_path)
        self.exp = self.folders[0]['folder']
        self.exp_existed = osp.isdir(self.exp)
        self.new_dirs = set()  # folders that did not exist before this run (and their missing parents)
        for entry in self.folders:
            probe = entry['folder']
            while not osp.exists(probe) and osp.dirname(probe) != probe:
                self.new_dirs.add(probe)
                probe = osp.dirname(probe)
        self.locks = []
        self.archived = None
        self.started = False
        self.notes = []  # takeover lines, logged once BasicSR's logger exists

    # ------------------------------------------------------------------------------------------------ start-up
    def start(self):
        """Rank 0: check every output folder, then lock; the outcome is shared with every rank.

        Raises:
            RunLockedError: A folder is held by a live run.
            OSError: A folder cannot be written (named).
        """
        error = None
        if self.rank == 0:
            try:
                for entry in self.folders:
                    check_output_folder(entry['folder'], entry['what'])
                for entry in self.folders:
                    if entry['lock'] and not any(lk.folder == entry['folder'] for lk in self.locks):
                        self._lock(entry['folder'], entry['what'], entry['hint'])
            except Exception as err:  # shared with the other ranks, which would wait for rank 0 otherwise
                error = err
        if self.opt.get('dist') and self.world_size > 1:
            import torch.distributed as dist
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
            if error is not None and self.rank != 0:
                try:
                    error = type(error)(f'{error} (found by rank 0)')
                except TypeError:
                    error = RuntimeError(f'{type(error).__name__}: {error} (found by rank 0)')
        if error is not None:
            raise error

    def _lock(self, folder, what, hint):
        lock = FolderLock(folder, what, hint).acquire()
        self.locks.append(lock)
        text = lock.takeover_text()
        if text:
            self.notes.append(text)
        return lock

    def make_exp_dirs(self, opt):
        """BasicSR's ``make_exp_dirs`` for a fresh start (rank 0), archiving an existing experiment folder, locked."""
        if self.rank != 0:
            return
        if self.exp_existed and osp.exists(self.exp):
            archived = f'{self.exp}_archived_{get_time_str()}'
            print(f'Path already exists. Rename it to {archived}', flush=True)
            inside = [lk for lk in self.locks if _within(lk.folder, self.exp)]
            check_not_in_use(self.exp, self.folders[0]['what'], own=[lk.path for lk in self.locks])
            os.rename(self.exp, archived)
            self.archived = archived
            for lock in inside:
                self.locks.remove(lock)
                lock.release(moved_to=archived + lock.folder[len(self.exp):])
            for lock in inside:
                new = self._lock(lock.folder, lock.what, lock.hint)
                self.new_dirs.add(new.folder)
            self.new_dirs.update(e['folder'] for e in self.folders if _within(e['folder'], self.exp))
        os.makedirs(self.exp, exist_ok=True)
        for key, path in opt['path'].items():
            skip = ('strict_load', 'pretrain_network', 'resume', 'param_key')
            if key == 'experiments_root' or path is None or any(k in key for k in skip):
                continue
            os.makedirs(path, exist_ok=True)

    def log_notes(self):
        """Log the takeover lines into BasicSR's log."""
        from basicsr.utils import get_root_logger
        logger = get_root_logger()
        for text in self.notes:
            logger.warning(text)
        self.notes = []

    # ------------------------------------------------------------------------------------------------ the end
    def release(self):
        """Release every lock (their files are removed)."""
        for lock in reversed(self.locks):
            lock.release()
        self.locks = []

    def clean_failed_start(self):
        """Remove the folders this run created holding only start-up files; give back an archived experiment folder.

        Rank 0 only; never touches a folder that existed before the run or holds another file. Returns the removed
        folders.
        """
        if self.rank != 0:
            return []
        for text in self.notes:  # the logger may not exist yet
            print(text, file=sys.stderr, flush=True)
        self.notes = []
        removed = []
        outputs = {entry['folder'] for entry in self.folders}
        own_locks = {lock.path for lock in self.locks}
        for folder in sorted(self.new_dirs, key=len, reverse=True):  # a folder before its parents
            if not osp.isdir(folder) or osp.islink(folder):
                continue
            if folder in outputs and removable_tree(folder, self.opt_name, own_locks):
                shutil.rmtree(folder, ignore_errors=True)
            elif folder not in outputs and not os.listdir(folder):  # a parent: only when empty
                os.rmdir(folder)
            if not osp.exists(folder):
                removed.append(folder)
        self.release()
        if self.archived and not osp.exists(self.exp):
            os.rename(self.archived, self.exp)
            print(f'Start-up failed: renamed {self.archived} back to {self.exp}', file=sys.stderr, flush=True)
        if removed:
            top = [f for f in removed if not any(f != g and _within(f, g) for g in removed)]
            print(
                f'Start-up failed: removed what this run had created (no result in it): {", ".join(top)}',
                file=sys.stderr,
                flush=True)
        return removed

    def explain_write_error(self, err):
        """An OSError on a file of an output folder during the run, raised again with what was kept; else None."""
        names = [osp.abspath(n) for n in (err.filename, err.filename2) if isinstance(n, str)]
        for entry in sorted(self.folders, key=lambda e: len(e['folder']), reverse=True):
            hit = next((n for n in names if _within(n, entry['folder'])), None)
            if hit is None:
                continue
            folder = osp.dirname(hit) if hit != entry['folder'] else hit
            states = self.opt['path'].get('training_states', osp.join(self.exp, 'training_states'))
            message = (f'Writing to {folder} ({entry["what"]}) failed: {err}. The run stopped. Nothing already '
                       'written there is lost or corrupted (every file is written under a temporary name and moved '
                       'into place; a distilled set lists whole units only). ')
            if _within(hit, osp.abspath(states)):
                message += ('This training state was not written; the earlier ones are intact: make the folder '
                            'writable (or free space), then rerun with --auto_resume: finished units are skipped and '
                            f'the unit in progress resumes from the last training state in {states}.')
            else:
                message += ('The unit being written was computed but not saved: make the folder writable (or free '
                            'space), then rerun with --auto_resume: finished units are skipped and that unit is '
                            f'recomputed from the last training state in {states}.')
            try:
                return type(err)(message)
            except TypeError:
                return OSError(message)
        return None


def _parse_checking_name(parse, root, is_train):
    """BasicSR's ``parse_options``, then :func:`check_experiment_name` (a non-str ``name`` named, not a TypeError)."""
    try:
        opt, args = parse(root, is_train=is_train)
    except TypeError:
        import argparse

        from basicsr.utils.options import _postprocess_yml_value
        from basicsr_distill.utils.options import read_option_file
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument('-opt')
        parser.add_argument('--force_yml', nargs='+', default=None)
        known, _ = parser.parse_known_args()
        name = read_option_file(known.opt).get('name') if known.opt else None
        for entry in known.force_yml or []:
            key, _, value = entry.partition('=')
            if key.strip() == 'name':
                name = _postprocess_yml_value(value.strip())
        check_experiment_name(name)
        raise
    check_experiment_name(opt.get('name'))
    return opt, args


def guarded_train_pipeline(root_path):
    """BasicSR's ``train_pipeline(root_path)`` with the locks, checks and clean-up of the module docstring.

    Raises:
        RunLockedError: An output folder is held by a live run (every rank stops, nothing is changed).
        OSError: An output folder cannot be written at start-up, or a file of one fails during the run (named, with its
            option and what was kept).
        Exception: Whatever BasicSR or the model raises; a failed start first removes what it created.
    """
    import basicsr.train as bt
    saved = {name: getattr(bt, name) for name in ('parse_options', 'make_exp_dirs', 'build_model')}
    guards = []

    def parse_options(root, is_train=True):
        opt, args = _parse_checking_name(saved['parse_options'], root, is_train)
        check_path_keys(opt)  # any model: a misspelt path.pretrain_network_<net> would be ignored, nothing created
        apply_forced_seed(opt, args.force_yml)  # BasicSR seeds before --force_yml: a forced manual_seed is missed
        guards.append(RunGuard(opt, args.opt, root))
        guards[0].start()
        return opt, args

    def make_exp_dirs(opt):
        guards[0].make_exp_dirs(opt)

    def build_model(opt):
        guards[0].log_notes()
        model = saved['build_model'](opt)
        guards[0].started = True
        return model

    bt.parse_options, bt.make_exp_dirs, bt.build_model = parse_options, make_exp_dirs, build_model
    try:
        bt.train_pipeline(root_path)
    except BaseException as err:
        guard = guards[0] if guards else None
        if guard is not None and not guard.started:
            guard.clean_failed_start()
        elif guard is not None and isinstance(err, OSError):
            explained = guard.explain_write_error(err)
            if explained is not None:
                raise explained from err
        raise
    finally:
        for name, value in saved.items():
            setattr(bt, name, value)
        if guards:
            guards[0].release()


def guarded_test_pipeline(root_path):
    """BasicSR's ``test_pipeline(root_path)``, the name checked and ``results/<name>`` archived only when no live run
    holds a lock inside it.

    Raises:
        ValueError: The option ``name`` is not one plain folder name (nothing is created or moved).
        RunLockedError: ``results/<name>`` exists and a live run writes inside it (nothing is moved).
        Exception: Whatever BasicSR or the model raises.
    """
    import basicsr.test as bt
    saved = {name: getattr(bt, name) for name in ('parse_options', 'make_exp_dirs')}

    def parse_options(root, is_train=False):
        return _parse_checking_name(saved['parse_options'], root, is_train)

    def make_exp_dirs(opt):
        if opt.get('rank', 0) == 0:
            check_not_in_use(opt['path']['results_root'], f'the results folder of option name={opt["name"]!r}')
        saved['make_exp_dirs'](opt)

    bt.parse_options, bt.make_exp_dirs = parse_options, make_exp_dirs
    try:
        bt.test_pipeline(root_path)
    finally:
        for name, value in saved.items():
            setattr(bt, name, value)


__all__ = [
    'LOCK_NAME', 'FolderLock', 'RunGuard', 'RunLockedError', 'check_not_in_use', 'check_output_folder',
    'guarded_test_pipeline', 'guarded_train_pipeline', 'held_locks_under', 'is_writable', 'output_folders',
    'removable_tree', 'startup_leftover'
]

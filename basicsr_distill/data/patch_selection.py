"""Stage 1 of Minimax-SR ("Dataset Distillation for SR without Class Labels and Pre-trained Models", Sec. III-A):
informative patch selection and pseudo-labels.

1. ``patch_candidates.select_patches``: HR patches (those of ``data.sr_patches.cut_patch_pairs``) whose PSNR_bic
   (Eq. 1) is strictly below a threshold, by default the median;
2. ``patch_features.embed_patches``: one feature per patch, CLIP ViT-B/32 from a local folder (the paper's) or the
   weight-free ``color_gradient``;
3. ``patch_features.cluster_patches``: seeded k-means pseudo-labels (k = 7 in the paper);
4. :func:`save_selection` / :func:`load_selection`: the selection as JSON; :func:`run_stage1` does 1-4 and reuses
   its output when options and images are unchanged;
5. :func:`ensure_patch_store` / :class:`PatchStore`: the selected patches streamed into one uint8 ``.npy``, read per
   step by offset, so no process holds every patch in memory.

Options of :func:`run_stage1` (``distill.stage1``; docs/Methods_Minimax.md):
    dataroot_gt (str): Folder of HR training images (flat).
    meta_info_file (str, optional): Only the images named in its first column.
    gt_size (int): HR patch side, a multiple of ``scale``.
    stride (int): Patch stride, a multiple of ``scale``. Default: ``gt_size`` (the paper does not say).
    scale (int): PSNR_bic factor. Default: the section's, else the top-level ``scale``, else 4.
    threshold (str | float): ``'median'`` (default) or dB; patches strictly below are kept.
    extractor (dict): ``{'type': 'clip', 'path': <dir>, 'batch_size': 64, 'device': None}`` (default type) or
        ``{'type': 'color_gradient', 'crop': <int>}``.
    k (int): Number of pseudo-classes. Default: 7.
    seed (int): k-means seed. Default: 0.
    normalize (str): Before k-means. Default: ``'l2'`` for CLIP, ``'standardize'`` for ``color_gradient``.
"""
import hashlib
import json
import math
import numpy as np
import os
import os.path as osp
import tempfile
import time
from collections import Counter
from numpy.lib import format as npy_format

from basicsr.utils import get_root_logger
from basicsr_distill.data.patch_candidates import (OPTION_PREFIX, _check_geometry, _check_int, _check_threshold,
                                                   _is_int, iter_patches, select_patches)
from basicsr_distill.data.patch_features import (NORMALIZE_MODES, _extractor_options, check_clip_dir, cluster_patches,
                                                 embed_patches)
from basicsr_distill.utils.file_io import TMP_PREFIX, atomic_path
from basicsr_distill.utils.image_io import list_images

SELECTION_FORMAT = 'basicsr_distill.minimax_sr.stage1_selection'
SELECTION_VERSION = 1
STAGE1_KEYS = ('dataroot_gt', 'meta_info_file', 'gt_size', 'stride', 'scale', 'threshold', 'extractor', 'k', 'seed',
               'normalize')
RECORD_KEYS = ('path', 'y', 'x', 'size', 'psnr_bic')
# Extractor options that change the speed (and float round-off) only: not part of the identity of a selection.
RUNTIME_EXTRACTOR_KEYS = ('batch_size', 'device')
PATCH_STORE_FORMAT = 'basicsr_distill.minimax_sr.stage1_patches'

__all__ = [
    'SELECTION_FORMAT', 'SELECTION_VERSION', 'STAGE1_KEYS', 'RECORD_KEYS', 'RUNTIME_EXTRACTOR_KEYS', 'save_selection',
    'load_selection', 'stage1_options', 'source_fingerprint', 'run_stage1', 'PATCH_STORE_FORMAT', 'selection_key',
    'write_patch_store', 'PatchStore', 'ensure_patch_store'
]


# ------------------------------------------------------------------------------------------------- 4. the file
def save_selection(path, records, labels, meta):
    """Write a stage-1 selection as standard JSON, atomically (parent folder created):
    ``{'format', 'version', 'meta', 'patches': [{'path', 'y', 'x', 'size', 'psnr_bic', 'label'}]}``.

    Args:
        path (str): Output file.
        records (list[dict]): Records (``path``, ``y``, ``x``, ``size``, finite ``psnr_bic``).
        labels (array-like): (N,) int pseudo-labels >= 0, one per record.
        meta (dict): JSON-serialisable information.

    Raises:
        ValueError: Lengths differ, an invalid record, or ``meta`` not JSON-serialisable (NaN / inf included).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(records):
        raise ValueError(f'save_selection: {len(records)} records but labels of shape {labels.shape}')
    if not isinstance(meta, dict):
        raise ValueError(f'save_selection: meta must be a dict, got {type(meta).__name__}')
    patches = []
    for rec, label in zip(records, labels.tolist()):
        patch = {key: rec[key] for key in RECORD_KEYS}
        patch['label'] = label
        problem = _patch_problem(patch)
        if problem:
            raise ValueError(f'save_selection: {problem} in {patch}')
        patches.append(patch)
    selection = {'format': SELECTION_FORMAT, 'version': SELECTION_VERSION, 'meta': meta, 'patches': patches}
    text = json.dumps(selection, indent=1, allow_nan=False)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    for stale in os.listdir(folder):  # left by a writer killed (SIGKILL) before its os.replace; one writer at a time
        if stale.startswith(f'.{osp.basename(path)}.') and stale.endswith('.tmp'):
            os.remove(osp.join(folder, stale))
    # the temporary keeps its own pattern ``.<name>.<random>.tmp`` (the cleaning above recognises it)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix='.tmp', dir=folder)
    with atomic_path(path, tmp=tmp):
        with os.fdopen(fd, 'w') as f:
            f.write(text + '\n')
        os.chmod(tmp, 0o644)


def _patch_problem(patch):
    """Why a stored patch entry is invalid, or None."""
    if not isinstance(patch, dict) or set(patch) != set(RECORD_KEYS) | {'label'}:
        return f'a patch entry must have exactly the keys {list(RECORD_KEYS) + ["label"]}'
    if not isinstance(patch['path'], str) or not patch['path']:
        return 'path must be a non-empty string'
    if not all(_is_int(patch[key]) and patch[key] >= 0 for key in ('y', 'x', 'size', 'label')) or patch['size'] < 1:
        return 'y, x, label must be ints >= 0 and size an int >= 1'
    value = patch['psnr_bic']
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 'psnr_bic must be a finite number'
    return None


def load_selection(path):
    """Read and check a selection written by :func:`save_selection`.

    Returns:
        dict: ``{'records': list[dict], 'labels': (N,) int64 ndarray, 'meta': dict}``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Not valid JSON, not a stage-1 selection of this version, or an invalid entry (names the file).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'stage-1 selection {path} does not exist')
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f'stage-1 selection {path} is broken (not readable JSON: {err}); delete it to recompute') \
            from None
    if not isinstance(data, dict) or data.get('format') != SELECTION_FORMAT:
        raise ValueError(f'{path} is not a stage-1 selection (format {SELECTION_FORMAT!r} expected)')
    if data.get('version') != SELECTION_VERSION:
        raise ValueError(f'stage-1 selection {path} has version {data.get("version")!r}, this code reads version '
                         f'{SELECTION_VERSION}; delete it to recompute')
    if not isinstance(data.get('meta'), dict) or not isinstance(data.get('patches'), list):
        raise ValueError(f'stage-1 selection {path} is broken: meta (dict) or patches (list) missing')
    for i, patch in enumerate(data['patches']):
        problem = _patch_problem(patch)
        if problem:
            raise ValueError(f'stage-1 selection {path} is broken: patch {i}: {problem}')
    records = [{key: patch[key] for key in RECORD_KEYS} for patch in data['patches']]
    labels = np.array([patch['label'] for patch in data['patches']], dtype=np.int64)
    return {'records': records, 'labels': labels, 'meta': data['meta']}


# -------------------------------------------------------------------------------------------------- 5. pipeline
def stage1_options(opt):
    """Validated stage-1 options with defaults (module docstring), from ``distill.stage1`` or whole options.

    Returns:
        dict: JSON-compatible options with every key of :data:`STAGE1_KEYS`.

    Raises:
        ValueError: A missing, unknown or invalid option (named ``distill.stage1.<key>``).
    """
    default_scale = 4
    if isinstance(opt, dict) and 'distill' in opt:
        default_scale = opt.get('scale') or 4
        opt = (opt['distill'] or {}).get('stage1')
    if not isinstance(opt, dict):
        raise ValueError(f'{OPTION_PREFIX} must be a dict of options, got {opt!r}')
    unknown = sorted(set(opt) - set(STAGE1_KEYS))
    if unknown:
        raise ValueError(f'unknown {OPTION_PREFIX} option(s) {unknown}; known: {list(STAGE1_KEYS)}')
    if not isinstance(opt.get('dataroot_gt'), str) or not opt['dataroot_gt']:
        raise ValueError(f'{OPTION_PREFIX}.dataroot_gt (folder of HR images) is required, got '
                         f'{opt.get("dataroot_gt")!r}')
    meta_info = opt.get('meta_info_file')
    if meta_info is not None and not isinstance(meta_info, str):
        raise ValueError(f'{OPTION_PREFIX}.meta_info_file must be a path, got {meta_info!r}')
    scale = opt.get('scale', default_scale)
    gt_size = opt.get('gt_size')
    gt_size, stride, scale = _check_geometry(gt_size, opt.get('stride', gt_size), scale)
    extractor = _extractor_options(opt.get('extractor', {'type': 'clip'}))
    if extractor['type'] == 'color_gradient' and extractor['crop'] is None:
        extractor['crop'] = gt_size
    normalize = opt.get('normalize', 'l2' if extractor['type'] == 'clip' else 'standardize')
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f'{OPTION_PREFIX}.normalize must be one of {list(NORMALIZE_MODES)}, got {normalize!r}')
    return {
        'dataroot_gt': opt['dataroot_gt'],
        'meta_info_file': meta_info,
        'gt_size': gt_size,
        'stride': stride,
        'scale': scale,
        'threshold': _check_threshold(opt.get('threshold', 'median')),
        'extractor': extractor,
        'k': _check_int('k', opt.get('k', 7), 1),
        'seed': _check_int('seed', opt.get('seed', 0), 0),
        'normalize': normalize,
    }


def _identity(options):
    """The options that determine a selection (runtime-only extractor keys dropped), JSON-normalised."""
    options = json.loads(json.dumps(options))
    if isinstance(options, dict) and isinstance(options.get('extractor'), dict):
        for key in RUNTIME_EXTRACTOR_KEYS:
            options['extractor'].pop(key, None)
    return options


def source_fingerprint(paths):
    """Count and SHA-1 of the listed image paths and byte sizes (no decoding: misses same-size edits)."""
    digest = hashlib.sha1()
    for path in paths:
        digest.update(f'{path}\t{osp.getsize(path)}\n'.encode('utf-8'))
    return {'num_images': len(paths), 'sha1': digest.hexdigest()}


def run_stage1(opt_dict, out_path):
    """Stage 1 of Minimax-SR saved to ``out_path``, or the saved selection when options (runtime extractor keys aside)
    and
    images (:func:`source_fingerprint`) are unchanged.

    Args:
        opt_dict (dict): ``distill.stage1`` or whole options (see :func:`stage1_options`).
        out_path (str): The JSON file of the selection.

    Returns:
        dict: As :func:`load_selection`; labels in [0, k); ``meta`` with ``options``, ``source``, ``threshold_db``,
        counts, ``psnr_bic_median``, ``feature_dim``, ``cluster_sizes``, ``seconds``.

    Raises:
        FileNotFoundError: Missing image folder, or CLIP without local weights (names the option).
        ValueError: Invalid options, no patch below the threshold, or fewer selected patches than ``k``.
    """
    logger = get_root_logger()
    opts = stage1_options(opt_dict)
    source = source_fingerprint(list_images(opts['dataroot_gt'], opts['meta_info_file']))
    if osp.exists(out_path):
        try:
            previous = load_selection(out_path)
        except ValueError as err:
            logger.warning(f'run_stage1: {err}: recomputing')
        else:
            meta = previous['meta']
            if _identity(meta.get('options')) == _identity(opts) and meta.get('source') == source:
                logger.info(f'run_stage1: reusing {out_path} ({len(previous["records"])} patches, same options)')
                return previous
            logger.info(f'run_stage1: {out_path} was made with other options or images: recomputing')
    if opts['extractor']['type'] == 'clip':
        check_clip_dir(opts['extractor']['path'])  # fail before the selection, not after it
    start = time.monotonic()
    records, stats = select_patches(opts['dataroot_gt'], opts['gt_size'], opts['stride'], opts['scale'],
                                    opts['threshold'], opts['meta_info_file'])
    if len(records) < opts['k']:
        raise ValueError(f'run_stage1: {len(records)} patch(es) below PSNR_bic {stats["threshold_db"]} dB, fewer '
                         f'than {OPTION_PREFIX}.k={opts["k"]}: raise {OPTION_PREFIX}.threshold, lower gt_size or '
                         'stride, or add images')
    features = embed_patches(records, opts['extractor'])
    labels = cluster_patches(features, opts['k'], opts['seed'], opts['normalize'])
    sizes = Counter(labels.tolist())
    meta = dict(
        options=opts,
        source=source,
        **stats,
        feature_dim=int(features.shape[1]),
        cluster_sizes=[sizes[c] for c in range(opts['k'])],
        seconds=round(time.monotonic() - start, 3))
    save_selection(out_path, records, labels, meta)
    logger.info(f'run_stage1: {len(records)} patches in {opts["k"]} pseudo-classes (sizes {meta["cluster_sizes"]}) '
                f'saved to {out_path}')
    return load_selection(out_path)


# --------------------------------------------------------------------------------------------- 6. patch store
def selection_key(selection):
    """40 hex digits: SHA-1 of the selection's records' (path, y, x, size) and of its source fingerprint."""
    records = [[rec['path'], rec['y'], rec['x'], rec['size']] for rec in selection['records']]
    text = json.dumps({'records': records, 'source': selection['meta'].get('source')}, sort_keys=True)
    return hashlib.sha1(text.encode('utf-8')).hexdigest()


def _quantise(patch):
    """float RGB in [0, 1] -> uint8 (exact for 8-bit sources: ``read_rgb`` divided them by 255)."""
    return np.clip(np.rint(patch * 255.), 0, 255).astype(np.uint8)


def write_patch_store(records, path, key):
    """Stream the patches of ``records`` (all of side S) into ``path``, a uint8 ``.npy`` of shape (N, S, S, 3).

    One source image is decoded at a time; the file replaces ``path`` atomically, then the sidecar
    ``<path minus .npy>.json`` (format, ``key``, shape) is written, so a store without its sidecar is not trusted.
    Quantising to 8 bits is exact for 8-bit sources.

    Raises:
        ValueError: No record, records of different sizes, or a record outside its image (names the file).
    """
    if not records:
        raise ValueError('write_patch_store: no patch to store (the selection is empty)')
    sizes = {rec['size'] for rec in records}
    if len(sizes) != 1:
        raise ValueError(f'write_patch_store: patches of several sizes {sorted(sizes)}')
    size = sizes.pop()
    shape = (len(records), size, size, 3)
    folder, name = osp.split(osp.abspath(path))
    for stale in os.listdir(folder) if osp.isdir(folder) else []:  # left by a writer killed before its os.replace
        if stale.startswith(TMP_PREFIX) and stale.endswith(f'-{name}'):
            os.remove(osp.join(folder, stale))
    header = {'descr': npy_format.dtype_to_descr(np.dtype(np.uint8)), 'fortran_order': False, 'shape': shape}
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            npy_format.write_array_header_1_0(f, header)
            for patch in iter_patches(records):
                f.write(_quantise(patch).tobytes())
    side = _sidecar(path)
    with atomic_path(side) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump({'format': PATCH_STORE_FORMAT, 'key': key, 'shape': list(shape)}, f)


def _sidecar(path):
    return (path[:-4] if path.endswith('.npy') else path) + '.json'


class PatchStore:
    """Read access by offset to a store of :func:`write_patch_store` (not memory-mapped, not cached); ``shape`` is
    (N, S, S, 3).

    Raises:
        ValueError: ``path`` is not a uint8 (N, S, S, 3) ``.npy`` of the expected length (named).
    """

    def __init__(self, path):
        self.path = path
        with open(path, 'rb') as f:
            version = npy_format.read_magic(f)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4 or shape[3] != 3:
            raise ValueError(f'patch store {path} is not a uint8 (N, S, S, 3) array: {dtype} {shape}')
        self.shape = tuple(int(v) for v in shape)
        self.row_bytes = int(np.prod(self.shape[1:]))
        if osp.getsize(path) != self.offset + self.shape[0] * self.row_bytes:
            raise ValueError(f'patch store {path} is truncated: delete it to rewrite it')

    def __len__(self):
        return self.shape[0]

    def read(self, indices):
        """(B, S, S, 3) uint8 RGB patches at ``indices`` (B,) in [0, N), any order; IndexError out of range."""
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        out = np.empty((len(indices), ) + self.shape[1:], dtype=np.uint8)
        with open(self.path, 'rb') as f:
            for j, i in enumerate(indices):
                if not 0 <= i < self.shape[0]:
                    raise IndexError(f'patch {i} out of range [0, {self.shape[0]}) in {self.path}')
                f.seek(self.offset + i * self.row_bytes)
                f.readinto(memoryview(out[j]).cast('B'))
        return out


def ensure_patch_store(selection, path):
    """The :class:`PatchStore` of ``selection`` at ``path`` (record order), reused when its sidecar names this
    selection,
    else written by :func:`write_patch_store` (whose errors it raises).
    """
    key = selection_key(selection)
    shape = [len(selection['records'])] + [selection['records'][0]['size']] * 2 + [3] if selection['records'] else []
    try:
        with open(_sidecar(path), encoding='utf-8') as f:
            side = json.load(f)
        if side.get('format') == PATCH_STORE_FORMAT and side.get('key') == key and side.get('shape') == shape:
            store = PatchStore(path)
            if list(store.shape) == shape:
                get_root_logger().info(f'ensure_patch_store: reusing {path} ({shape[0]} patches)')
                return store
    except (OSError, ValueError):  # missing, broken or truncated: rewritten below
        pass
    start = time.monotonic()
    write_patch_store(selection['records'], path, key)
    store = PatchStore(path)
    get_root_logger().info(f'ensure_patch_store: {len(store)} patches of {shape[1]}x{shape[2]} written to {path} '
                           f'({osp.getsize(path) / 2**20:.1f} MiB) in {time.monotonic() - start:.1f} s')
    return store

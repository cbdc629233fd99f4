"""Stage 1 of Minimax-SR ("Dataset Distillation for SR without Class Labels and Pre-trained Models", Sec. III-A):
informative patch selection and pseudo-labels.

1. :func:`select_patches`: cut HR patches of every training image and keep those whose PSNR_bic (Eq. 1,
   :func:`basicsr_distill.ops.psnr_bic.psnr_bic`) is strictly below a threshold, by default the median of all
   patches (the paper's 23 dB on OST is the median of its patch distribution).
2. :func:`embed_patches`: one image feature per selected patch. ``{'type': 'clip', 'path': <local dir>}`` is the
   paper's (CLIP ViT-B/32 ``image_embeds``, loaded from a local directory only); ``{'type': 'color_gradient'}`` is
   weight-free (:func:`~basicsr_distill.data.sr_class_dataset.color_gradient_features`) and works everywhere.
3. :func:`cluster_patches`: seeded k-means pseudo-labels (k = 7 in the paper, the number of OST classes).
4. :func:`save_selection` / :func:`load_selection`: the selection as a JSON file (written atomically), reused by
   the later stages and by reruns; :func:`run_stage1` does it all and skips the work when its output exists with
   the same options and the same images.

Patches are those of :func:`~basicsr_distill.data.sr_patches.cut_patch_pairs`: the image is mod-cropped to the
scale, the top-left corners are ``patch_positions(side, gt_size, stride)`` along each axis (every ``stride`` plus
the last position, so the border is covered); ``gt_size`` and ``stride`` are multiples of the scale, so every
corner is also on the LR grid of the whole image.

Options of :func:`run_stage1` (section ``distill.stage1``):
    dataroot_gt (str): Folder of HR training images (flat, as :func:`list_images` reads it).
    meta_info_file (str, optional): Only the images named in its first column. Default: every image.
    gt_size (int): HR patch side, a multiple of ``scale``.
    stride (int): Patch stride, a multiple of ``scale``. Default: ``gt_size`` (non-overlapping patches; the paper
        does not say).
    scale (int): Resize factor of PSNR_bic. Default: the section's ``scale``, else the top-level ``scale`` of the
        options, else 4 (the paper's).
    threshold (str | float): ``'median'`` (default) or a PSNR_bic in dB; patches strictly below are kept.
    extractor (dict): ``{'type': 'clip', 'path': <dir>, 'batch_size': 64, 'device': None}`` (default type; the
        path is required) or ``{'type': 'color_gradient', 'crop': <int>}``. See :func:`embed_patches`.
    k (int): Number of pseudo-classes. Default: 7.
    seed (int): k-means seed. Default: 0.
    normalize (str): Feature normalisation before k-means, see :func:`cluster_patches`. Default: ``'l2'`` for CLIP
        (cosine geometry of CLIP embeddings), ``'standardize'`` for ``color_gradient`` (mixed units).
"""
import hashlib
import json
import math
import os
import os.path as osp
import tempfile
import time
from collections import Counter, OrderedDict

import numpy as np

from basicsr.utils import get_root_logger
from basicsr_distill.data.sr_class_dataset import color_gradient_features
from basicsr_distill.data.sr_patches import list_images, modcrop, patch_positions, read_rgb
from basicsr_distill.ops.psnr_bic import psnr_bic_batch

OPTION_PREFIX = 'distill.stage1'
SELECTION_FORMAT = 'basicsr_distill.minimax_sr.stage1_selection'
SELECTION_VERSION = 1
EXTRACTOR_TYPES = ('clip', 'color_gradient')
NORMALIZE_MODES = ('l2', 'standardize', 'none')
STAGE1_KEYS = ('dataroot_gt', 'meta_info_file', 'gt_size', 'stride', 'scale', 'threshold', 'extractor', 'k', 'seed',
               'normalize')
RECORD_KEYS = ('path', 'y', 'x', 'size', 'psnr_bic')
# Extractor options that change the speed (and float round-off) only: not part of the identity of a selection.
RUNTIME_EXTRACTOR_KEYS = ('batch_size', 'device')
CLIP_WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                     'pytorch_model.bin.index.json')


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name, value, minimum):
    if not _is_int(value) or value < minimum:
        raise ValueError(f'{OPTION_PREFIX}.{name} must be an int >= {minimum}, got {value!r}')
    return int(value)


def _check_threshold(threshold):
    if threshold == 'median':
        return 'median'
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) or \
            not math.isfinite(threshold):
        raise ValueError(f"{OPTION_PREFIX}.threshold must be 'median' or a finite PSNR_bic in dB, got {threshold!r}")
    return float(threshold)


def _check_geometry(gt_size, stride, scale):
    scale = _check_int('scale', scale, 2)
    gt_size = _check_int('gt_size', gt_size, 2 * scale)
    stride = _check_int('stride', stride, 1)
    if gt_size % scale or stride % scale:
        raise ValueError(f'{OPTION_PREFIX}.gt_size ({gt_size}) and {OPTION_PREFIX}.stride ({stride}) must be '
                         f'multiples of scale={scale}')
    return gt_size, stride, scale


# ------------------------------------------------------------------------------------------------ 1. selection
def select_patches(hr_folder, gt_size, stride, scale=4, threshold='median', meta_info_file=None):
    """HR patches of every image whose PSNR_bic is strictly below the threshold (Sec. III-A, Eq. 1).

    Every image of ``hr_folder`` is read with :func:`read_rgb` (float RGB in [0, 1]) and mod-cropped to ``scale``;
    its patches are cut at ``patch_positions(H, gt_size, stride) x patch_positions(W, gt_size, stride)`` (row-major)
    and scored with :func:`psnr_bic_batch` (BasicSR's bicubic ``imresize`` down and up, float, no rounding, peak 1).
    With ``threshold='median'`` the threshold is the median PSNR_bic of all patches of all images (so about half
    are kept; fewer when many patches tie at the median).

    Args:
        hr_folder (str): Folder of HR images.
        gt_size (int): HR patch side, a multiple of ``scale``, at least ``2 * scale``.
        stride (int): Stride between patches, a multiple of ``scale``.
        scale (int): Resize factor of PSNR_bic (>= 2). Default: 4.
        threshold (str | float): ``'median'`` or a PSNR_bic in dB. Default: ``'median'``.
        meta_info_file (str, optional): Only the images named in its first column. Default: None.

    Returns:
        tuple[list[dict], dict]: The selected patches, in image then row-major order, each
        ``{'path': str, 'y': int, 'x': int, 'size': int, 'psnr_bic': float}`` (top-left corner in the HR image,
        PSNR_bic in dB, finite); and statistics ``{'threshold_db': float | None (None when infinite: more than
        half of the patches are flat), 'num_images': int (images with at least one patch), 'skipped_images':
        list[str] (smaller than gt_size), 'num_candidates': int, 'num_selected': int, 'psnr_bic_median': float |
        None}``.

    Raises:
        FileNotFoundError: ``hr_folder`` missing or without images.
        ValueError: Invalid ``gt_size`` / ``stride`` / ``scale`` / ``threshold``, an image that cannot be decoded
            (names it), or no image of at least ``gt_size`` x ``gt_size``.
    """
    gt_size, stride, scale = _check_geometry(gt_size, stride, scale)
    threshold = _check_threshold(threshold)
    logger = get_root_logger()
    start = time.monotonic()
    candidates, skipped = [], []  # (path, y, x, psnr)
    for path in list_images(hr_folder, meta_info_file):
        img = modcrop(read_rgb(path), scale)
        ys, xs = patch_positions(img.shape[0], gt_size, stride), patch_positions(img.shape[1], gt_size, stride)
        if not ys or not xs:
            skipped.append(path)
            continue
        coords = [(y, x) for y in ys for x in xs]
        psnrs = psnr_bic_batch(np.stack([img[y:y + gt_size, x:x + gt_size] for y, x in coords]), scale)
        candidates.extend((path, y, x, float(p)) for (y, x), p in zip(coords, psnrs))
    if skipped:
        shown = ', '.join(osp.basename(p) for p in skipped[:10]) + (', ...' if len(skipped) > 10 else '')
        logger.warning(f'select_patches: skipped {len(skipped)} image(s) of {hr_folder} smaller than gt_size='
                       f'{gt_size}: {shown}')
    if not candidates:
        raise ValueError(f'select_patches: no image of {hr_folder} is at least {gt_size}x{gt_size} pixels')
    all_psnr = np.array([c[3] for c in candidates])
    median = float(np.median(all_psnr))
    value = median if threshold == 'median' else threshold
    records = [{'path': p, 'y': int(y), 'x': int(x), 'size': gt_size, 'psnr_bic': v} for p, y, x, v in candidates
               if v < value]
    stats = {
        'threshold_db': value if math.isfinite(value) else None,
        'num_images': len({c[0] for c in candidates}),
        'skipped_images': skipped,
        'num_candidates': len(candidates),
        'num_selected': len(records),
        'psnr_bic_median': median if math.isfinite(median) else None,
    }
    logger.info(f'select_patches: {len(records)} of {len(candidates)} patches ({gt_size}x{gt_size}, stride {stride}) '
                f'of {stats["num_images"]} images below PSNR_bic {value:.2f} dB ({threshold}) in '
                f'{time.monotonic() - start:.1f} s')
    return records, stats


def iter_patches(records):
    """HR patches of selection records, read from their source images.

    Each source image is decoded once per run of consecutive records from it (records are grouped by image as
    :func:`select_patches` returns them).

    Args:
        records (list[dict]): Records with ``path``, ``y``, ``x``, ``size``.

    Yields:
        ndarray: (size, size, 3) float32 RGB patch in [0, 1], in record order.

    Raises:
        ValueError: An image cannot be decoded, or a record falls outside its image (a stale selection); names the
            file.
    """
    current, img = None, None
    for rec in records:
        if rec['path'] != current:
            current, img = rec['path'], read_rgb(rec['path'])
        y, x, size = rec['y'], rec['x'], rec['size']
        if y < 0 or x < 0 or y + size > img.shape[0] or x + size > img.shape[1]:
            raise ValueError(f'patch (y={y}, x={x}, size={size}) lies outside {rec["path"]} of size {img.shape[:2]} '
                             '(the selection is stale: rerun stage 1)')
        yield img[y:y + size, x:x + size]


# -------------------------------------------------------------------------------------------------- 2. features
def _extractor_options(extractor):
    """Validated extractor options with their defaults filled in."""
    name = f'{OPTION_PREFIX}.extractor'
    if not isinstance(extractor, dict) or extractor.get('type') not in EXTRACTOR_TYPES:
        raise ValueError(f"{name} must be a dict with type in {list(EXTRACTOR_TYPES)} ('arch' extractors are not "
                         f'supported), got {extractor!r}')
    if extractor['type'] == 'clip':
        allowed = {'type': 'clip', 'path': None, 'batch_size': 64, 'device': None}
    else:
        allowed = {'type': 'color_gradient', 'crop': None}
    unknown = sorted(set(extractor) - set(allowed))
    if unknown:
        raise ValueError(f'{name} of type {extractor["type"]!r} takes the keys {sorted(allowed)}, got unknown '
                         f'{unknown}')
    out = dict(allowed, **extractor)
    if out['type'] == 'clip':
        out['batch_size'] = _check_int('extractor.batch_size', out['batch_size'], 1)
        if out['path'] is not None and not isinstance(out['path'], str):
            raise ValueError(f'{name}.path must be a directory path, got {out["path"]!r}')
        if out['device'] is not None and not isinstance(out['device'], str):
            raise ValueError(f'{name}.device must be a string such as "cpu" or "cuda", got {out["device"]!r}')
    elif out['crop'] is not None:
        out['crop'] = _check_int('extractor.crop', out['crop'], 1)
    return out


def _missing_clip_message(path, problem):
    return (f'{OPTION_PREFIX}.extractor.path: {problem}. The CLIP extractor loads a Hugging Face CLIP checkpoint '
            'from a local directory only (config.json and model.safetensors or pytorch_model.bin, as save_pretrained '
            'writes them, e.g. a copy of openai/clip-vit-base-patch32, the paper\'s ViT-B/32; preprocessor_config.json '
            'optional); nothing is downloaded. Set distill.stage1.extractor.path to such a directory, or use '
            "distill.stage1.extractor: {type: color_gradient} (weight-free, works without any checkpoint).")


def check_clip_dir(path):
    """Check that ``path`` is a local CLIP checkpoint directory (config.json and weights), without loading it.

    Raises:
        FileNotFoundError: ``path`` unset, missing, or without config.json or weights; the message names the option
            ``distill.stage1.extractor.path`` and the weight-free alternative.
    """
    if not path:
        raise FileNotFoundError(_missing_clip_message(path, 'not set'))
    if not osp.isdir(path):
        raise FileNotFoundError(_missing_clip_message(path, f'directory {path} does not exist'))
    if not osp.isfile(osp.join(path, 'config.json')) or \
            not any(osp.isfile(osp.join(path, f)) for f in CLIP_WEIGHT_FILES):
        raise FileNotFoundError(
            _missing_clip_message(path, f'{path} holds no CLIP checkpoint (config.json plus one of '
                                  f'{", ".join(CLIP_WEIGHT_FILES)})'))


def load_clip(path):
    """CLIP vision tower with projection and its image processor, from a local directory only.

    Both come from ``from_pretrained(path, local_files_only=True)``. The directory may hold a whole CLIP model
    (``model_type: clip``, as ``openai/clip-vit-base-patch32``: only the vision tower and the visual projection are
    loaded, with the top-level ``projection_dim``) or a ``CLIPVisionModelWithProjection``. A checkpoint missing
    any vision weight is refused (transformers would initialise them at random). Without
    ``preprocessor_config.json`` the processor is CLIP's default (resize of the short side and centre crop to the
    model's ``image_size`` with bicubic resampling, rescale 1/255, normalisation with CLIP's mean and std).

    Args:
        path (str): The directory.

    Returns:
        tuple: ``(model, processor)``: ``CLIPVisionModelWithProjection`` in eval mode on the CPU and
        ``CLIPImageProcessor``.

    Raises:
        FileNotFoundError: The directory does not exist or holds no config or weights; the message names the
            option ``distill.stage1.extractor.path`` and the weight-free alternative.
        ValueError: The checkpoint lacks weights of the vision tower or the visual projection.
    """
    check_clip_dir(path)
    # only the CLIP extractor needs transformers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPVisionModelWithProjection

    with open(osp.join(path, 'config.json'), encoding='utf-8') as f:
        model_type = json.load(f).get('model_type')
    config = None
    if model_type == 'clip':  # a whole CLIP model: its vision config does not carry the projection size
        clip_config = CLIPConfig.from_pretrained(path, local_files_only=True)
        config = clip_config.vision_config
        config.projection_dim = clip_config.projection_dim
    model, info = CLIPVisionModelWithProjection.from_pretrained(
        path, config=config, local_files_only=True, output_loading_info=True)
    missing = list(info.get('missing_keys') or []) + list(info.get('mismatched_keys') or [])
    if missing:
        raise ValueError(f'{OPTION_PREFIX}.extractor.path: the checkpoint in {path} lacks weights of the CLIP vision '
                         f'tower or projection ({len(missing)} missing or mismatched, e.g. {missing[:3]}); its '
                         'features would be random')
    model.eval()
    if osp.isfile(osp.join(path, 'preprocessor_config.json')):
        processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
    else:
        side = int(model.config.image_size)
        processor = CLIPImageProcessor(size={'shortest_edge': side}, crop_size={'height': side, 'width': side})
        get_root_logger().warning(f'{path} has no preprocessor_config.json: CLIP\'s default preprocessing at '
                                  f'{side}x{side} is used')
    return model, processor


def _batches(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def embed_patches(records, extractor):
    """Image features of the selected patches (the embedding clustered into pseudo-labels, Sec. III-A).

    Extractors:

    * ``{'type': 'clip', 'path': <dir>, 'batch_size': 64, 'device': None}`` (the paper's): ``image_embeds`` of
      ``CLIPVisionModelWithProjection`` (the projected CLIP image embedding, 512-D for ViT-B/32, not normalised),
      loaded by :func:`load_clip` from a local directory only. Patches are quantised to 8 bits (lossless for
      8-bit sources) and go through the checkpoint's ``CLIPImageProcessor`` (short side resized to 224 with
      bicubic resampling, centre crop, CLIP mean / std). ``device`` defaults to CUDA when available; eval mode,
      no gradients.
    * ``{'type': 'color_gradient', 'crop': None}``: weight-free 14-D colour / gradient statistics
      (:func:`color_gradient_features`) of the patch (``crop`` defaults to the whole patch).

    ``{'type': 'arch'}`` (randomly initialised SR networks) is not supported: their features carry no semantics.

    Args:
        records (list[dict]): Selection records (``path``, ``y``, ``x``, ``size``), non-empty.
        extractor (dict): One of the above.

    Returns:
        ndarray: (N, D) float32 features, one row per record.

    Raises:
        FileNotFoundError: CLIP without a local checkpoint (names ``distill.stage1.extractor.path``).
        ValueError: Invalid extractor options, no record, a record outside its image, or a CLIP checkpoint without
            the vision weights.
    """
    ext = _extractor_options(extractor)
    if not records:
        raise ValueError('embed_patches: no patch to embed (the selection is empty)')
    start = time.monotonic()
    if ext['type'] == 'color_gradient':
        feats = np.stack([color_gradient_features(p, ext['crop'] or p.shape[0]) for p in iter_patches(records)])
        feats = feats.astype(np.float32)
    else:
        import torch

        model, processor = load_clip(ext['path'])
        device = torch.device(ext['device'] or ('cuda' if torch.cuda.is_available() else 'cpu'))
        model.to(device)
        out = []
        quantised = (np.clip(np.rint(p * 255.), 0, 255).astype(np.uint8) for p in iter_patches(records))
        with torch.inference_mode():
            for batch in _batches(quantised, ext['batch_size']):
                pixels = processor(images=batch, return_tensors='pt', input_data_format='channels_last')
                pixels = pixels['pixel_values'].to(device=device, dtype=model.dtype)
                out.append(model(pixel_values=pixels).image_embeds.float().cpu().numpy())
        feats = np.concatenate(out)
    get_root_logger().info(f'embed_patches: {feats.shape[0]} patches -> {feats.shape[1]}-D {ext["type"]} features '
                           f'in {time.monotonic() - start:.1f} s')
    return feats


# ------------------------------------------------------------------------------------------------ 3. clustering
def cluster_patches(features, k=7, seed=0, normalize='l2'):
    """Pseudo-labels of the selected patches by seeded k-means on their features (Sec. III-A).

    The features are first normalised: ``'l2'`` scales every row to unit norm (k-means then groups by cosine
    similarity, the geometry CLIP embeddings are trained in; zero rows stay zero), ``'standardize'`` gives every
    dimension zero mean and unit variance over the patches (constant dimensions become 0; for mixed-unit features
    such as ``color_gradient``, as :func:`kmeans_pseudo_labels` does), ``'none'`` leaves them. Then
    scikit-learn's ``KMeans(n_clusters=k, n_init=10, random_state=seed)`` runs, and the clusters are renumbered in
    the order of their first member, so the labels depend on the data and the seed only.

    Args:
        features (ndarray): (N, D) float features, finite.
        k (int): Number of pseudo-classes, 1 <= k <= N. Default: 7 (the paper's).
        seed (int): k-means seed. Default: 0.
        normalize (str): ``'l2'``, ``'standardize'`` or ``'none'``. Default: ``'l2'``.

    Returns:
        ndarray: (N,) int64 labels in [0, k).

    Raises:
        ValueError: Features not 2-D or not finite, ``k`` out of range, unknown ``normalize``, or an empty cluster
            (fewer than k distinct feature vectors).
    """
    from sklearn.cluster import KMeans

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f'cluster_patches expects finite (N, D) features, got shape {x.shape}')
    num = x.shape[0]
    if not _is_int(k) or not 1 <= k <= num:
        raise ValueError(f'{OPTION_PREFIX}.k must be an int in [1, {num}] (the number of selected patches), got {k!r}')
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f'{OPTION_PREFIX}.normalize must be one of {list(NORMALIZE_MODES)}, got {normalize!r}')
    if normalize == 'l2':
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norm > 0, norm, 1.)
    elif normalize == 'standardize':
        std = x.std(0)
        x = (x - x.mean(0)) / np.where(std > 0, std, 1.)
    raw = KMeans(n_clusters=int(k), n_init=10, random_state=int(seed)).fit_predict(x)
    order = list(OrderedDict.fromkeys(raw.tolist()))
    if len(order) != k:
        raise ValueError(f'k-means found only {len(order)} non-empty clusters for {OPTION_PREFIX}.k={k} (too few '
                         'distinct patches); lower k')
    renumber = {old: new for new, old in enumerate(order)}
    return np.array([renumber[v] for v in raw.tolist()], dtype=np.int64)


# ------------------------------------------------------------------------------------------------- 4. the file
def save_selection(path, records, labels, meta):
    """Write a stage-1 selection as JSON, atomically (a temporary file in the same folder, then ``os.replace``).

    Layout: ``{'format': SELECTION_FORMAT, 'version': 1, 'meta': meta, 'patches': [{'path', 'y', 'x', 'size',
    'psnr_bic', 'label'}, ...]}``, standard JSON (no NaN / Infinity). A reader never sees a half-written file;
    the parent folder is created if needed.

    Args:
        path (str): Output file.
        records (list[dict]): Selection records (``path``, ``y``, ``x``, ``size``, finite ``psnr_bic``).
        labels (array-like): (N,) int pseudo-labels >= 0, one per record.
        meta (dict): JSON-serialisable information (:func:`run_stage1` stores the options, the resolved threshold,
            counts and the image fingerprint).

    Raises:
        ValueError: Lengths differ, a record is invalid, or ``meta`` is not JSON-serialisable (NaN / inf included).
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
    text = json.dumps({'format': SELECTION_FORMAT, 'version': SELECTION_VERSION, 'meta': meta, 'patches': patches},
                      indent=1, allow_nan=False)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    for stale in os.listdir(folder):  # left by a writer killed (SIGKILL) before its os.replace; one writer at a time
        if stale.startswith(f'.{osp.basename(path)}.') and stale.endswith('.tmp'):
            os.remove(osp.join(folder, stale))
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text + '\n')
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


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

    Args:
        path (str): The JSON file.

    Returns:
        dict: ``{'records': list[dict] (path, y, x, size, psnr_bic), 'labels': ndarray (N,) int64, 'meta': dict}``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not valid JSON, not a stage-1 selection of this version, or holds an invalid entry;
            the message names the file.
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
    """Validated stage-1 options with their defaults filled in (see the module docstring).

    Args:
        opt (dict): The ``distill.stage1`` section, or whole options holding ``distill: {stage1: ...}`` (then the
            top-level ``scale`` is the default scale).

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
    """Fingerprint of a list of images: their count and the SHA-1 of their paths (as listed) and byte sizes.

    Cheap (no decoding): it detects added, removed, renamed and resized files, not same-size edits.
    """
    digest = hashlib.sha1()
    for path in paths:
        digest.update(f'{path}\t{osp.getsize(path)}\n'.encode('utf-8'))
    return {'num_images': len(paths), 'sha1': digest.hexdigest()}


def run_stage1(opt_dict, out_path):
    """Stage 1 of Minimax-SR: PSNR_bic selection, features, k-means pseudo-labels, saved to ``out_path``.

    When ``out_path`` already holds a valid selection made with the same options (extractor ``batch_size`` and
    ``device`` aside) from the same images (:func:`source_fingerprint`), it is returned without any work (no
    image decoded, no model loaded). Otherwise (missing, broken, other options or images) the selection is
    recomputed and the file replaced atomically.

    Args:
        opt_dict (dict): The ``distill.stage1`` options or whole options (see :func:`stage1_options`).
        out_path (str): The JSON file of the selection.

    Returns:
        dict: As :func:`load_selection`: ``records``, ``labels`` (N,) int64 in [0, k), ``meta`` (``options``,
        ``source``, ``threshold_db``, ``num_images``, ``skipped_images``, ``num_candidates``, ``num_selected``,
        ``psnr_bic_median``, ``feature_dim``, ``cluster_sizes``, ``seconds``).

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
    meta = dict(options=opts, source=source, **stats, feature_dim=int(features.shape[1]),
                cluster_sizes=[sizes[c] for c in range(opts['k'])], seconds=round(time.monotonic() - start, 3))
    save_selection(out_path, records, labels, meta)
    logger.info(f'run_stage1: {len(records)} patches in {opts["k"]} pseudo-classes (sizes {meta["cluster_sizes"]}) '
                f'saved to {out_path}')
    return load_selection(out_path)

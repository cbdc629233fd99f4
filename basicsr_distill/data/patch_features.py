"""Minimax-SR stage 1, steps 2 and 3 (:mod:`basicsr_distill.data.patch_selection`): patch features and their seeded
k-means pseudo-labels.
"""
import json
import numpy as np
import os.path as osp
import time

from basicsr.utils import get_root_logger
from basicsr_distill.data.patch_candidates import OPTION_PREFIX, _check_int, _is_int, iter_patches
from basicsr_distill.data.sr_class_dataset import color_gradient_features
from basicsr_distill.ops.clustering import seeded_kmeans, standardize

EXTRACTOR_TYPES = ('clip', 'color_gradient')
NORMALIZE_MODES = ('l2', 'standardize', 'none')
CLIP_WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                     'pytorch_model.bin.index.json')


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
    """Check that ``path`` is a local CLIP checkpoint folder (config.json and weights), without loading it.

    Raises:
        FileNotFoundError: ``path`` unset, missing, or incomplete; names ``distill.stage1.extractor.path`` and the
            weight-free alternative.
    """
    if not path:
        raise FileNotFoundError(_missing_clip_message(path, 'not set'))
    if not osp.isdir(path):
        raise FileNotFoundError(_missing_clip_message(path, f'directory {path} does not exist'))
    if not osp.isfile(osp.join(path, 'config.json')) or \
            not any(osp.isfile(osp.join(path, f)) for f in CLIP_WEIGHT_FILES):
        raise FileNotFoundError(
            _missing_clip_message(
                path, f'{path} holds no CLIP checkpoint (config.json plus one of '
                f'{", ".join(CLIP_WEIGHT_FILES)})'))


def load_clip(path):
    """``(CLIPVisionModelWithProjection in eval mode on the CPU, CLIPImageProcessor)`` from a local folder only.

    The folder may hold a whole CLIP model (only the vision tower and projection are loaded) or the vision model;
    without ``preprocessor_config.json`` the processor is CLIP's default.

    Raises:
        FileNotFoundError: As :func:`check_clip_dir`.
        ValueError: Weights of the vision tower or projection are missing (transformers would draw them at random).
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
    """Features of the selected patches (clustered into pseudo-labels, Sec. III-A).

    Extractors: ``{'type': 'clip', 'path', 'batch_size': 64, 'device': None}`` (the paper's): the unnormalised
    ``image_embeds`` (512-D for ViT-B/32) of 8-bit patches through the checkpoint's processor, eval mode, no gradients,
    CUDA when available; ``{'type': 'color_gradient', 'crop': None}``: the weight-free 14-D
    ``color_gradient_features`` of the patch. Randomly initialised SR networks (``'arch'``) are refused: their features
    carry no semantics.

    Args:
        records (list[dict]): Selection records (``path``, ``y``, ``x``, ``size``), non-empty.
        extractor (dict): One of the above.

    Returns:
        ndarray: (N, D) float32, one row per record.

    Raises:
        FileNotFoundError: CLIP without a local checkpoint (names ``distill.stage1.extractor.path``).
        ValueError: Invalid extractor options, no record, a record outside its image, or missing vision weights.
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
    """Pseudo-labels by seeded k-means on normalised features, clusters renumbered by first member (Sec. III-A).

    ``normalize``: ``'l2'`` rows to unit norm (cosine geometry, as CLIP is trained; zero rows stay zero),
    ``'standardize'`` each dimension to zero mean and unit variance (mixed units, as ``color_gradient``), ``'none'``.

    Args:
        features (ndarray): (N, D) finite float features.
        k (int): Pseudo-classes, 1 <= k <= N. Default: 7 (the paper's).
        seed (int): k-means seed. Default: 0.
        normalize (str): ``'l2'``, ``'standardize'`` or ``'none'``. Default: ``'l2'``.

    Returns:
        ndarray: (N,) int64 labels in [0, k).

    Raises:
        ValueError: Features not 2-D or not finite, ``k`` out of range, unknown ``normalize``, or an empty cluster.
    """
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
        x = standardize(x)
    labels = seeded_kmeans(x, int(k), int(seed), n_init=10, renumber='first_seen')
    found = len(np.unique(labels))
    if found != k:
        raise ValueError(f'k-means found only {found} non-empty clusters for {OPTION_PREFIX}.k={k} (too few '
                         'distinct patches); lower k')
    return labels

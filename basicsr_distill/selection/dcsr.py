"""DCSR patch selection (Ding et al., "Not All Patches Are Equal: Hierarchical Dataset Condensation for Single Image
Super-Resolution", IEEE SPL 2023) as a coreset baseline on a pool of HR patches.

1. Texture complexity: the mean Sobel gradient magnitude of the luma (:func:`texture_complexity`).
2. Pruning: keep the patches strictly above the median complexity.
3. Clustering: seeded k-means (15 clusters) on texture descriptors of the kept patches (:func:`texture_features`).
4. Even sampling: the same number of patches from every cluster (round-robin), up to the budget.

Choices where the paper is silent: luma ``0.299 R + 0.587 G + 0.114 B`` (float64), 3x3 Sobel divided by 4 (a unit
step reads 1) with ``cv2.BORDER_REFLECT``, as ``data.sr_class_dataset.color_gradient_features``; descriptors are
histograms summing to 1 (k-means on raw values); k-means is :func:`~basicsr_distill.ops.clustering.seeded_kmeans`
with ``min(num_clusters, kept)`` clusters. Sampling shuffles each cluster and the cluster order (seeded), then takes
round-robin, so per-cluster counts differ by at most 1 except for exhausted clusters. Departure from the released
code (QingtangDing/DCSR, a uniform 20 % per cluster): equal counts meet any budget exactly, as the benchmark compares
sets of equal size. A budget above the kept half takes all kept patches, then the others by decreasing complexity
(ties: lowest index), with a warning.
"""
import cv2
import math
import numpy as np
import torch

from basicsr.utils import get_root_logger
from basicsr_distill.data.sr_class_dataset import GRADIENT_BIN_EDGES
from basicsr_distill.ops.clustering import seeded_kmeans
from basicsr_distill.selection.common import as_feature_matrix, check_num_select

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
NUM_ORIENTATION_BINS = 9


def _luma_batch(patches):
    """(N, H, W, 3) RGB or (N, H, W) luma -> (N, H, W) float64 luma."""
    if isinstance(patches, torch.Tensor):
        patches = patches.detach().cpu().numpy()
    patches = np.asarray(patches)
    if patches.ndim == 4 and patches.shape[3] == 3:
        luma = patches.astype(np.float64) @ np.array(LUMA_WEIGHTS)
    elif patches.ndim == 3:
        luma = patches.astype(np.float64)
    else:
        raise ValueError(f'DCSR expects (N, H, W, 3) RGB or (N, H, W) luma patches, got shape {patches.shape}')
    if luma.shape[0] == 0 or luma.shape[1] < 2 or luma.shape[2] < 2:
        raise ValueError(f'DCSR needs at least one patch of at least 2x2 pixels, got shape {patches.shape}')
    if not np.all(np.isfinite(luma)):
        raise ValueError('DCSR patches hold NaN or infinite values')
    return luma


def _sobel(luma):
    """Sobel gradients (gx, gy) of one (H, W) float64 image, divided by 4, reflected border."""
    gx = cv2.Sobel(luma, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT) / 4
    gy = cv2.Sobel(luma, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT) / 4
    return gx, gy


def texture_complexity(patches):
    """Texture complexity of each patch: ``mean_pixels sqrt(gx^2 + gy^2)`` of its luma (see the module docstring).

    Args:
        patches (ndarray | Tensor): (N, H, W, 3) RGB or (N, H, W) luma patches, float in [0, 1], H, W >= 2.

    Returns:
        ndarray: (N,) float64, >= 0 (0 for a flat patch).

    Raises:
        ValueError: Other shapes, empty input or non-finite values.
    """
    luma = _luma_batch(patches)
    out = np.empty(luma.shape[0])
    for i, img in enumerate(luma):
        gx, gy = _sobel(img)
        out[i] = np.sqrt(gx * gx + gy * gy).mean()
    return out


def texture_features(patches):
    """Texture descriptor of each patch: gradient magnitude and orientation histograms (Sobel of
    :func:`texture_complexity`).

    Values 0-7: fractions of the pixels in the magnitude bins :data:`GRADIENT_BIN_EDGES`; values 8-16: the
    magnitude-weighted histogram of ``atan2(gy, gx) mod 180 deg`` in 9 bins centred on 0, 20, ..., 160 deg, divided by
    the total magnitude (all zeros for a flat patch).

    Args:
        patches (ndarray | Tensor): As :func:`texture_complexity`.

    Returns:
        ndarray: (N, 17) float64.

    Raises:
        ValueError: Other shapes, empty input or non-finite values.
    """
    luma = _luma_batch(patches)
    edges = np.array(GRADIENT_BIN_EDGES)
    bin_width = math.pi / NUM_ORIENTATION_BINS
    out = np.zeros((luma.shape[0], len(edges) - 1 + NUM_ORIENTATION_BINS))
    for i, img in enumerate(luma):
        gx, gy = _sobel(img)
        mag = np.sqrt(gx * gx + gy * gy)
        out[i, :len(edges) - 1] = np.histogram(mag, bins=edges)[0] / mag.size
        theta = np.mod(np.arctan2(gy, gx), math.pi)
        bins = np.floor((theta + bin_width / 2) / bin_width).astype(np.int64) % NUM_ORIENTATION_BINS
        orient = np.bincount(bins.ravel(), weights=mag.ravel(), minlength=NUM_ORIENTATION_BINS)
        total = orient.sum()
        if total > 0:
            out[i, len(edges) - 1:] = orient / total
    return out


def _round_robin(labels, seed):
    """A permutation whose first n entries are the seeded even sample of size n."""
    gen = torch.Generator().manual_seed(int(seed))
    clusters = np.unique(labels)
    cluster_rank = np.empty(int(clusters.max()) + 1, dtype=np.int64)
    cluster_rank[clusters[torch.randperm(len(clusters), generator=gen).numpy()]] = np.arange(len(clusters))
    position = np.empty(len(labels), dtype=np.int64)
    for c in clusters:  # in label order, so that the draws do not depend on the cluster ranks
        members = np.flatnonzero(labels == c)
        position[members[torch.randperm(len(members), generator=gen).numpy()]] = np.arange(len(members))
    return np.lexsort((cluster_rank[labels], position))  # by round, then by cluster rank


def select_dcsr_from_descriptors(complexity, features, num_select, num_clusters=15, seed=0, return_info=False):
    """DCSR selection from precomputed complexities and descriptors (the rule is in the module docstring).

    Args:
        complexity (ndarray): (N,) texture complexities.
        features (ndarray): (N, D) texture descriptors.
        num_select (int): n, 1 <= n <= N.
        num_clusters (int): k-means clusters, >= 1. Default: 15.
        seed (int): Seed of k-means and of the sampling order. Default: 0.
        return_info (bool): Also return a dict of details. Default: False.

    Returns:
        list[int] | tuple[list[int], dict]: n distinct indices in the order taken. The dict: ``median``, ``kept``
        ((N,) bool), ``labels`` ((N,) int64, -1 where not clustered), ``per_cluster``, ``num_clusters``, ``num_filled``.

    Raises:
        ValueError: Shapes that do not match, non-finite values, n or num_clusters out of range.
    """
    complexity = np.asarray(complexity, dtype=np.float64)
    feats = as_feature_matrix(features)
    if complexity.ndim != 1 or complexity.shape[0] != feats.shape[0] or not np.all(np.isfinite(complexity)):
        raise ValueError(f'complexity must be finite of shape ({feats.shape[0]},), got {complexity.shape}')
    num = complexity.shape[0]
    num_select = check_num_select(num_select, num)
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, (int, np.integer)) or num_clusters < 1:
        raise ValueError(f'num_clusters must be an int >= 1, got {num_clusters!r}')
    median = float(np.median(complexity))
    kept = complexity > median
    kept_idx = np.flatnonzero(kept)
    labels = np.full(num, -1, dtype=np.int64)
    per_cluster, used_clusters = [], 0
    if len(kept_idx) > num_select:
        used_clusters = int(min(num_clusters, len(kept_idx)))
        labels[kept_idx] = seeded_kmeans(feats[kept_idx], used_clusters, int(seed), n_init=10, renumber='none')
        chosen = kept_idx[_round_robin(labels[kept_idx], seed)[:num_select]]
        per_cluster = np.bincount(labels[chosen], minlength=used_clusters).tolist()
        order = chosen.tolist()
        num_filled = 0
    else:
        rest = np.flatnonzero(~kept)
        rest = rest[np.argsort(-complexity[rest], kind='stable')]
        num_filled = num_select - len(kept_idx)
        order = kept_idx.tolist() + rest[:num_filled].tolist()
        if num_filled:
            get_root_logger().warning(
                f'DCSR: only {len(kept_idx)} of {num} patches are above the median complexity {median:.4g}; '
                f'{num_filled} of the {num_select} requested are filled from the others by decreasing complexity')
    if not return_info:
        return order
    return order, {
        'median': median,
        'kept': kept,
        'labels': labels,
        'per_cluster': per_cluster,
        'num_clusters': used_clusters,
        'num_filled': num_filled
    }


def select_dcsr(patches_hr, num_select, num_clusters=15, seed=0, return_info=False):
    """DCSR on HR patches: :func:`texture_complexity`, :func:`texture_features`, :func:`select_dcsr_from_descriptors`.

    Args:
        patches_hr (ndarray | Tensor): (N, H, W, 3) RGB or (N, H, W) luma HR patches, float in [0, 1].
        num_select, num_clusters, seed: As :func:`select_dcsr_from_descriptors`.
        return_info (bool): Also return the details, with ``'complexity'`` (N,) added. Default: False.

    Raises:
        ValueError: Invalid patches, n or num_clusters.
    """
    complexity = texture_complexity(patches_hr)
    result = select_dcsr_from_descriptors(complexity, texture_features(patches_hr), num_select, num_clusters, seed,
                                          return_info)
    if return_info:
        result[1]['complexity'] = complexity
    return result

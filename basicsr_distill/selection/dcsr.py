"""DCSR patch selection (Ding et al., "Not All Patches Are Equal: Hierarchical Dataset Condensation for Single
Image Super-Resolution", IEEE SPL 2023), as a coreset baseline on a pool of HR patches.

1. **Texture complexity** of every patch: the mean Sobel gradient magnitude of its luma (:func:`texture_complexity`).
2. **Pruning**: keep the patches whose complexity is strictly above the median of the pool.
3. **Clustering**: k-means (15 clusters by default, seeded) on a texture descriptor of the kept patches
   (:func:`texture_features`: gradient-magnitude and gradient-orientation histograms).
4. **Even sampling**: the same number of patches from every cluster (round-robin), up to the budget.

Decisions where the paper is silent (or that a baseline must fix):

* Luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (float64), 3x3 Sobel with ``cv2.BORDER_REFLECT``, magnitude
  ``sqrt(gx^2 + gy^2) / 4`` (a unit step reads 1), the same as
  :func:`~basicsr_distill.data.sr_class_dataset.color_gradient_features`.
* Texture descriptor: 8 + 9 values, each histogram summing to 1 (so k-means runs on the raw values, no
  standardisation): the fraction of pixels in the 8 log-spaced magnitude bins
  :data:`~basicsr_distill.data.sr_class_dataset.GRADIENT_BIN_EDGES` ``[0, 1/128, ..., 1/2, inf)``, and a
  magnitude-weighted histogram of the unsigned gradient orientation ``atan2(gy, gx) mod 180 deg`` in 9 bins of
  20 deg centred on 0, 20, ..., 160 deg (one global HOG cell; all zeros for a flat patch).
* k-means: scikit-learn ``KMeans(n_clusters=min(num_clusters, kept), n_init=10, random_state=seed)``
  (:func:`~basicsr_distill.ops.clustering.seeded_kmeans`, k-means' own cluster ids).
* Even sampling, seeded: the members of each cluster are put in a random order and the clusters in a random order
  (``torch.Generator().manual_seed(seed)``), then round ``r`` takes the ``r``-th member of every cluster that still
  has one, cluster after cluster, until ``num_select`` patches are taken. Every cluster therefore gets the same
  quota, small clusters give all they have and the remainder of the last round goes to the clusters first in the
  random order (water-filling: per-cluster counts differ by at most 1 except for exhausted clusters). A departure
  from the released code (QingtangDing/DCSR), which takes a uniform 20 % of each cluster (in proportion to its
  size); equal counts meet any budget exactly (the benchmark compares sets of equal pair counts). Its complexity
  is ``0.5 |gx| + 0.5 |gy|`` on grayscale and its texture features come from an unreleased DeepTen network.
* Budget larger than the kept half: all kept patches are taken, then the others by decreasing complexity (ties:
  lowest index); a warning says how many were filled that way.
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
    """Texture complexity of each patch: the mean Sobel gradient magnitude of its luma.

    ``c = mean_{pixels} sqrt(gx^2 + gy^2)``, with the 3x3 Sobel gradients divided by 4 (a unit step reads 1),
    border reflected (``cv2.BORDER_REFLECT``), luma ``0.299 R + 0.587 G + 0.114 B``.

    Args:
        patches (ndarray | Tensor): (N, H, W, 3) RGB or (N, H, W) luma patches, float in [0, 1], H, W >= 2.

    Returns:
        ndarray: (N,) float64 complexities, >= 0 (0 for a flat patch).

    Raises:
        ValueError: on other shapes, empty input or non-finite values.
    """
    luma = _luma_batch(patches)
    out = np.empty(luma.shape[0])
    for i, img in enumerate(luma):
        gx, gy = _sobel(img)
        out[i] = np.sqrt(gx * gx + gy * gy).mean()
    return out


def texture_features(patches):
    """Texture descriptor of each patch for DCSR's k-means: magnitude and orientation histograms of its gradient.

    For the Sobel gradients of :func:`texture_complexity`:

    * values 0-7: fractions of the pixels whose magnitude falls in the bins :data:`GRADIENT_BIN_EDGES`;
    * values 8-16: magnitude-weighted histogram of the unsigned orientation ``theta = atan2(gy, gx) mod 180 deg``,
      bin ``b = floor((theta + 10 deg) / 20 deg) mod 9`` (bins centred on 0, 20, ..., 160 deg, so 0 and 179.9 deg
      share bin 0), divided by the total magnitude (all zeros for a flat patch).

    Args:
        patches (ndarray | Tensor): (N, H, W, 3) RGB or (N, H, W) luma patches, float in [0, 1], H, W >= 2.

    Returns:
        ndarray: (N, 17) float64.

    Raises:
        ValueError: on other shapes, empty input or non-finite values.
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
    """Order of the samples for even sampling: seeded order inside each cluster and of the clusters, round-robin.

    Returns:
        ndarray: a permutation of ``range(len(labels))``; its first n entries are the even sample of size n.
    """
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
    """DCSR selection from precomputed complexities and texture descriptors (see the module docstring).

    The rule: keep the patches with ``complexity > median(complexity)`` (strictly); if more are kept than
    ``num_select``, run k-means with ``min(num_clusters, kept)`` clusters on their descriptors and take the first
    ``num_select`` of the seeded round-robin over the clusters; otherwise take every kept patch and fill up with the
    others by decreasing complexity (ties: lowest index), with a warning.

    Args:
        complexity (ndarray): (N,) texture complexities (:func:`texture_complexity`).
        features (ndarray): (N, D) texture descriptors (:func:`texture_features`).
        num_select (int): n, 1 <= n <= N.
        num_clusters (int): k-means clusters (the paper: 15), >= 1. Default: 15.
        seed (int): Seed of k-means and of the sampling order. Default: 0.
        return_info (bool): Also return a dict of details. Default: False.

    Returns:
        list[int] | tuple[list[int], dict]: n distinct indices in the order taken (round-robin order, then the
        fill). With ``return_info``: ``{'median', 'kept' ((N,) bool), 'labels' ((N,) int64, the cluster of each
        kept patch, -1 for the others and when no clustering ran), 'per_cluster' (list of the counts taken per
        cluster id), 'num_clusters' (used), 'num_filled' (patches taken from the pruned half)}``.

    Raises:
        ValueError: if the shapes do not match, values are not finite, or n / num_clusters are out of range.
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
    """DCSR: prune below-median Sobel complexity, k-means on texture descriptors, sample evenly per cluster.

    :func:`texture_complexity` and :func:`texture_features` of the patches, then
    :func:`select_dcsr_from_descriptors` (the rule and its decisions are in the module docstring).

    Args:
        patches_hr (ndarray | Tensor): (N, H, W, 3) RGB or (N, H, W) luma HR patches, float in [0, 1].
        num_select (int): n, 1 <= n <= N.
        num_clusters (int): k-means clusters. Default: 15 (the paper's).
        seed (int): Seed of k-means and of the sampling order. Default: 0.
        return_info (bool): Also return the details dict of :func:`select_dcsr_from_descriptors`, with the
            ``'complexity'`` (N,) added. Default: False.

    Returns:
        list[int] | tuple[list[int], dict]: see :func:`select_dcsr_from_descriptors`.

    Raises:
        ValueError: on invalid patches, n or num_clusters.
    """
    complexity = texture_complexity(patches_hr)
    result = select_dcsr_from_descriptors(complexity, texture_features(patches_hr), num_select, num_clusters, seed,
                                          return_info)
    if return_info:
        result[1]['complexity'] = complexity
    return result

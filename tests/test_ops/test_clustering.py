"""seeded_kmeans: the renumbering modes on hand-made points, and the labels each former caller computed."""
import numpy as np
import pytest
import warnings
from collections import OrderedDict
from sklearn.cluster import KMeans

from basicsr_distill.ops import clustering
from basicsr_distill.ops.clustering import seeded_kmeans

# two tight 1-D clusters, the far one first: row 0 is at 10, rows 2 and 3 near 0
POINTS = np.array([[10.], [10.2], [0.], [0.2], [10.1]])


def _first_seen(raw):
    """The renumbering the pseudo-label callers did by hand (cluster ids by first member)."""
    order = list(OrderedDict.fromkeys(raw.tolist()))
    renumber = {old: new for new, old in enumerate(order)}
    return np.array([renumber[v] for v in raw.tolist()], dtype=np.int64)


def test_first_seen_numbers_clusters_by_their_first_row():
    labels, centers = seeded_kmeans(POINTS, 2, seed=0, renumber='first_seen', return_centers=True)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1, 1, 0]  # row 0 is in cluster 0
    np.testing.assert_allclose(centers, [[10.1], [0.1]])  # row j: the centre of label j
    # the same partition whatever the seed: the labels do not depend on k-means' numbering
    for seed in range(5):
        assert seeded_kmeans(POINTS, 2, seed=seed).tolist() == [0, 0, 1, 1, 0]


def test_none_keeps_kmeans_own_ids():
    for seed in range(5):
        labels, centers = seeded_kmeans(POINTS, 2, seed=seed, renumber='none', return_centers=True)
        km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(POINTS)
        np.testing.assert_array_equal(labels, km.labels_)
        np.testing.assert_array_equal(centers, km.cluster_centers_)
        # same partition as first_seen, possibly other ids; each centre is the mean of its members
        assert _first_seen(labels).tolist() == [0, 0, 1, 1, 0]
        for c in range(2):
            np.testing.assert_allclose(centers[c], POINTS[labels == c].mean(0))


def test_the_former_callers_labels_are_reproduced_bit_for_bit():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, 0.3, (12, 4)) for m in (0., 2., 4.)])[rng.permutation(36)]
    for seed in (0, 3):
        # ops.grouping.kmeans_groups: k-means' ids, 3 restarts, labels and centroids
        km = KMeans(n_clusters=3, n_init=3, random_state=seed).fit(x)
        labels, centers = seeded_kmeans(x, 3, seed, n_init=3, renumber='none', return_centers=True)
        np.testing.assert_array_equal(labels, km.labels_.astype(np.int64))
        np.testing.assert_array_equal(centers, km.cluster_centers_)
        # selection.dcsr: k-means' ids, 10 restarts (fit_predict)
        raw = KMeans(n_clusters=3, n_init=10, random_state=seed).fit_predict(x)
        np.testing.assert_array_equal(seeded_kmeans(x, 3, seed, renumber='none'), raw)
        # data.sr_class_dataset.kmeans_pseudo_labels / data.patch_features.cluster_patches: first member order
        np.testing.assert_array_equal(seeded_kmeans(x, 3, seed), _first_seen(raw))


def test_empty_clusters_leave_fewer_labels_and_their_centres_last():
    x = np.array([[0.], [0.], [1.], [1.]])  # 2 distinct points, 3 clusters: one stays empty
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # scikit-learn's ConvergenceWarning about the duplicated points
        labels, centers = seeded_kmeans(x, 3, seed=0, return_centers=True)
    assert labels.tolist() == [0, 0, 1, 1] and centers.shape == (3, 1)
    np.testing.assert_allclose(centers[:2], [[0.], [1.]])


def test_bad_arguments():
    with pytest.raises(ValueError, match=r'k must be an int in \[1, 5\], got 0'):
        seeded_kmeans(POINTS, 0)
    with pytest.raises(ValueError, match=r'k must be an int in \[1, 5\], got 6'):
        seeded_kmeans(POINTS, 6)
    with pytest.raises(ValueError, match='got True'):
        seeded_kmeans(POINTS, True)
    with pytest.raises(ValueError, match='renumber must be one of'):
        seeded_kmeans(POINTS, 2, renumber='sorted')
    with pytest.raises(ValueError, match=r'\(N, D\)'):
        seeded_kmeans(POINTS[:, 0], 2)


def test_standardize_hand_computed():
    x = np.array([[1., 5., 2.], [3., 5., 4.]])  # column means 2, 5, 3; population std 1, 0, 1
    np.testing.assert_array_equal(clustering.standardize(x), [[-1., 0., -1.], [1., 0., 1.]])

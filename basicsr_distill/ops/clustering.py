"""The one seeded k-means of the package (IDC's groups, GSDD's pseudo-labels, DCSR's clusters, Minimax-SR's
pseudo-classes): scikit-learn's ``KMeans`` with a fixed seed, and an optional renumbering of the clusters."""
import numpy as np

RENUMBER_MODES = ('none', 'first_seen')


def standardize(x):
    """Columns of ``x`` (N, D) to zero mean and unit population std (constant columns only centred); float64."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(0)
    return (x - x.mean(0)) / np.where(std > 0, std, 1.)


def seeded_kmeans(x, k, seed=0, n_init=10, renumber='first_seen', return_centers=False):
    """K-means of the rows of ``x``: ``KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)``.

    ``renumber='first_seen'`` numbers clusters in the order of their first row, so labels depend on the partition only;
    with fewer than k distinct rows labels lie in ``[0, non-empty clusters)``. ``'none'`` keeps k-means' ids.

    Args:
        x (ndarray): (N, D) features, read as float64.
        k (int): Number of clusters, 1 <= k <= N.
        seed (int): ``random_state`` of k-means. Default: 0.
        n_init (int): K-means restarts (best inertia kept). Default: 10.
        renumber (str): ``'none'`` or ``'first_seen'``. Default: ``'first_seen'``.
        return_centers (bool): Also return the centres. Default: False.

    Returns:
        ndarray | tuple[ndarray, ndarray]: (N,) int64 labels; with ``return_centers`` also the (k, D) float64
        centres, row j for label j (empty clusters last).

    Raises:
        ValueError: If ``x`` is not 2-D, ``k`` is not an int in [1, N], or ``renumber`` is unknown.
    """
    from sklearn.cluster import KMeans  # imported here: only the callers that cluster need scikit-learn

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f'seeded_kmeans expects (N, D) features, got shape {x.shape}')
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= x.shape[0]:
        raise ValueError(f'seeded_kmeans: k must be an int in [1, {x.shape[0]}], got {k!r}')
    if renumber not in RENUMBER_MODES:
        raise ValueError(f'seeded_kmeans: renumber must be one of {list(RENUMBER_MODES)}, got {renumber!r}')
    km = KMeans(n_clusters=int(k), n_init=n_init, random_state=int(seed)).fit(x)
    raw = km.labels_.astype(np.int64)
    centers = km.cluster_centers_
    if renumber == 'first_seen':
        ids, first = np.unique(raw, return_index=True)
        order = ids[np.argsort(first)]  # cluster ids by first member
        new_id = np.empty(int(k), dtype=np.int64)
        new_id[order] = np.arange(len(order))
        raw = new_id[raw]
        empty = np.setdiff1d(np.arange(int(k)), order)  # sorted: k-means' order
        centers = centers[np.concatenate([order, empty])]
    return (raw, centers) if return_centers else raw

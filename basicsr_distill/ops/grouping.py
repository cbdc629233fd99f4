"""Group-level structure of IDC's multi-level matching (Sec. 3.4): K-means groups of real local feature patches,
quota-bounded progressive assignment of synthetic local patches, nearest-real pairing inside a group.

A local patch (its p * p samples) is the unit; grouping and assignment use its descriptor (the mean of its samples),
pairing the whole patch (docs/Methods_IDC.md).
"""
import numpy as np
import torch

from basicsr_distill.ops.clustering import seeded_kmeans


def patch_descriptors(local):
    """(P, p*p, C) local patches -> (P, C) descriptors (mean over the patch's samples)."""
    return local.mean(dim=1)


def kmeans_groups(desc_real, num_groups, seed=0, n_init=3):
    """Partition (P_r, C) real patch descriptors into M = ``num_groups`` groups with seeded K-means.

    M is reduced to the number of distinct descriptors when there are fewer.

    Returns:
        tuple[Tensor, Tensor]: labels (P_r,) int64 in [0, M') and centroids (M', C) on desc_real's device.
    """
    data = desc_real.detach().double().cpu().numpy()
    m = int(min(num_groups, len(np.unique(data.round(8), axis=0))))
    if m <= 1:
        labels = np.zeros(len(data), dtype=np.int64)
        centroids = data.mean(0, keepdims=True)
    else:
        labels, centroids = seeded_kmeans(data, m, seed, n_init=n_init, renumber='none', return_centers=True)
    return (torch.from_numpy(labels).to(desc_real.device),
            torch.from_numpy(centroids).to(device=desc_real.device, dtype=desc_real.dtype))


def group_quotas(labels_real, num_groups, num_syn):
    """(M,) int64 synthetic patches per group q_m, proportional to the real group sizes (largest remainder).

    ``labels_real`` (P_r,) lie in [0, M); the quotas sum to ``num_syn`` = P_s, each within 1 of P_s |G_m| / P_r.
    """
    sizes = torch.bincount(labels_real.cpu(), minlength=num_groups).double()
    exact = sizes / sizes.sum() * num_syn
    quotas = torch.floor(exact).long()
    remainder = num_syn - int(quotas.sum())
    if remainder > 0:
        order = torch.argsort(exact - quotas.double(), descending=True, stable=True)
        quotas[order[:remainder]] += 1
    return quotas


def assignment_target(step, num_steps, num_syn):
    """Number of synthetic patches assigned after assignment step ``step`` of ``num_steps`` (1-based, linear)."""
    return int(round(num_syn * min(step, num_steps) / num_steps))


def assign_progressive(desc_syn, centroids, quotas, assigned, target):
    """Assign free synthetic patches to their nearest centroid, nearest first, within the quotas, up to ``target``.

    Args:
        desc_syn (Tensor): (P_s, C) synthetic patch descriptors.
        centroids (Tensor): (M, C).
        quotas (Tensor): (M,) int64, sum = P_s.
        assigned (Tensor): (P_s,) int64 group of each synthetic patch, -1 when unassigned (kept when assigned).
        target (int): Number of assigned patches wanted after this call (<= P_s).

    Returns:
        Tensor: The new (P_s,) assignment (a copy).
    """
    assigned = assigned.clone().cpu()
    counts = torch.bincount(assigned[assigned >= 0], minlength=len(quotas)).cpu()
    free = torch.nonzero(assigned < 0).squeeze(1)
    todo = target - int((assigned >= 0).sum())
    if todo <= 0 or free.numel() == 0:
        return assigned.to(desc_syn.device)
    dist = torch.cdist(desc_syn.detach()[free.to(desc_syn.device)].double(), centroids.detach().double()).cpu()
    order = torch.argsort(dist.flatten(), stable=True)
    num_groups = dist.shape[1]
    quotas = quotas.cpu()
    for flat in order.tolist():
        row, group = divmod(flat, num_groups)
        patch = int(free[row])
        if assigned[patch] >= 0 or counts[group] >= quotas[group]:
            continue
        assigned[patch] = group
        counts[group] += 1
        todo -= 1
        if todo == 0:
            break
    return assigned.to(desc_syn.device)


def nearest_real_in_group(local_syn, local_real, labels_real, assigned, patch_ids, exclude=None, real_owner=None):
    """Index of the nearest real local patch (Euclidean over p*p*C) in the same group, for given synthetic patches.

    Args:
        local_syn (Tensor): (P_s, p*p, C) synthetic local patches.
        local_real (Tensor): (P_r, p*p, C) real local patches.
        labels_real (Tensor): (P_r,) real groups.
        assigned (Tensor): (P_s,) synthetic groups (>= 0 for ``patch_ids``).
        patch_ids (Tensor): (K,) synthetic patches to pair.
        exclude (Tensor | None): (P_s,) int64 real LR patch each synthetic patch may not be paired with (its source
            with ``init: real``), -1 for none; dropped where it would exclude the whole group. Default: None.
        real_owner (Tensor | None): (P_r,) int64 real LR patch of each real local patch; needed with ``exclude``.

    Returns:
        Tensor: (K,) int64 indices into the real patches.
    """
    out = torch.empty(len(patch_ids), dtype=torch.long, device=local_syn.device)
    syn_flat = local_syn.detach().flatten(1)
    real_flat = local_real.detach().flatten(1)
    groups = assigned[patch_ids]
    for group in torch.unique(groups).tolist():
        rows = torch.nonzero(groups == group).squeeze(1)
        members = torch.nonzero(labels_real == group).squeeze(1)
        dist = torch.cdist(syn_flat[patch_ids[rows]], real_flat[members])
        if exclude is not None:
            banned = real_owner[members][None, :] == exclude[patch_ids[rows]][:, None]  # (rows, members)
            banned &= ~banned.all(dim=1, keepdim=True)  # nothing else in the group: keep the exclusion off
            dist = dist.masked_fill(banned, float('inf'))
        out[rows] = members[torch.argmin(dist, dim=1)]
    return out

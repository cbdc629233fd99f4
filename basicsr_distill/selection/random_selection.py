"""Random patch selection: the reference baseline of every SR distillation table."""
import torch


def select_random(num_candidates, num_select, seed=0):
    """Indices of ``num_select`` distinct candidates drawn uniformly with a seeded generator.

    Args:
        num_candidates (int): size of the patch pool.
        num_select (int): how many to keep, 1 <= num_select <= num_candidates.
        seed (int): generator seed (the global RNG is not used).

    Returns:
        list[int]: sorted indices.

    Raises:
        ValueError: if num_select is out of range.
    """
    if not 1 <= num_select <= num_candidates:
        raise ValueError(f'cannot select {num_select} of {num_candidates} patches')
    perm = torch.randperm(num_candidates, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[:num_select].tolist())

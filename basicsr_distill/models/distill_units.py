"""The pure helpers of ``DistillBaseModel`` (unit location, seeded generators, the non-finite guard, moving states to
the CPU), usable without a model (the ``idc_init`` control, tests).
"""
import copy
import math
import torch


def to_cpu(obj):
    """``obj`` with every tensor detached and on the CPU; dicts (shallow copies), lists and tuples of exact type are
    walked,
    anything else is returned unchanged. ``obj`` is not modified.
    """
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        out = copy.copy(obj)  # the same kind of mapping (dict, OrderedDict)
        out.update((k, to_cpu(v)) for k, v in obj.items())
        return out
    if type(obj) in (list, tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def unit_generator(seed, unit_index, salt=0):
    """A fresh CPU ``torch.Generator`` of unit ``unit_index`` of a run seeded ``seed``; the global RNG is not touched.

    Its seed is ``(seed * 1000003 + unit_index * 7919 + salt) % (2**63 - 1)``; ``salt`` distinguishes generators of one
    unit.
    """
    return torch.Generator().manual_seed((int(seed) * 1000003 + unit_index * 7919 + salt) % (2**63 - 1))


def check_finite(losses, where, params=()):
    """Stop on a NaN or infinite loss (or gradient) before the optimiser step, naming where it happened.

    Call it before ``backward()`` and again with ``params`` before ``step()``: the parameters keep their last finite
    values and nothing of the unit is written.

    Args:
        losses (dict[str, Tensor | float]): The scalar loss terms of the step.
        where (str): The unit and iteration, e.g. ``'IDC instance 2 of 3 (t20), iteration 8 (step 2 of 6)'``.
        params (iterable[Tensor]): Parameters whose ``.grad`` must be finite (checked when every loss is finite).

    Raises:
        FloatingPointError: Naming ``where``, the non-finite term or gradient and every loss value.
    """
    values = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in losses.items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    grads = [p.grad for p in params if p.grad is not None]
    bad_grad = not bad and any(not torch.isfinite(g).all() for g in grads)
    if not bad and not bad_grad:
        return
    terms = ', '.join(f'{k}={v:.6g}' for k, v in values.items())
    what = f'non-finite loss {", ".join(bad)}' if bad else 'non-finite gradient (finite loss)'
    raise FloatingPointError(f'{where}: {what} ({terms}); stopped before the optimiser step: the parameters keep '
                             'their last finite values, nothing of this unit was written and the units already in '
                             'the distilled set are kept. Lower the learning rate, or check the input images and '
                             'the pretrained weights.')


def locate(current_iter, iters_per_unit, rank=0, world_size=1):
    """1-based ``current_iter`` of process ``rank`` of W -> (unit index, 1-based step in [1, T]).

    Rank k takes units ``k, k + W, ...``; its j-th unit is its iterations ``j * T + 1 .. (j + 1) * T``. The index may be
    past the last unit (the caller checks).
    """
    local, step = divmod(current_iter - 1, iters_per_unit)
    return local * world_size + rank, step + 1


def locate_group(current_iter, iters_per_unit, rank=0, world_size=1, units_per_step=1):
    """As :func:`locate` for groups of K = ``units_per_step`` units: (the K unit indices, increasing, 1-based step).

    The last group may name indices past the last unit (the caller drops them); K = 1 gives ``[locate(...)[0]]``.
    """
    group, step = divmod(current_iter - 1, iters_per_unit)
    return [(group * units_per_step + m) * world_size + rank for m in range(units_per_step)], step + 1

"""The pure helpers of :class:`~basicsr_distill.models.distill_base_model.DistillBaseModel`: where an iteration falls
in the unit sequence, each unit's seeded generator, the non-finite guard, and moving states to the CPU.

They hold no model state, so the selection controls (``idc_init``) and the tests use them without building a model;
the base model exposes them as static methods (``DistillBaseModel.locate`` etc.).
"""
import copy
import math
import torch


def to_cpu(obj):
    """``obj`` with every tensor moved to the CPU (dicts, lists and tuples walked), for states sent between ranks.

    Args:
        obj (object): A tensor, a dict (or other mapping ``copy.copy`` can copy, e.g. OrderedDict), a list or tuple
            (exact types; subclasses such as named tuples are not walked), or anything else.

    Returns:
        object: Tensors detached and on the CPU; dicts shallow-copied (same mapping type) with their values
        converted; lists and tuples rebuilt from their converted items; anything else returned unchanged. ``obj``
        itself is not modified.
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
    """The CPU ``torch.Generator`` of unit ``unit_index`` of a run seeded ``seed`` (``manual_seed``), with ``salt``.

    The models draw every random choice of a unit from it (:meth:`DistillBaseModel.unit_generator`); the selection
    controls that reproduce a model's draws (``idc_init``) build the same one. Its seed is
    ``(seed * 1000003 + unit_index * 7919 + salt) % (2**63 - 1)``; the global RNG is not touched.

    Args:
        seed (int): The run's ``manual_seed``.
        unit_index (int): The unit (0-based, in ``unit_names`` order).
        salt (int): Distinguishes several generators of one unit. Default: 0.

    Returns:
        torch.Generator: A fresh CPU generator.
    """
    return torch.Generator().manual_seed((int(seed) * 1000003 + unit_index * 7919 + salt) % (2**63 - 1))


def check_finite(losses, where, params=()):
    """Stop on a NaN or infinite loss (or gradient) before the optimiser step, naming where it happened.

    Call it after the losses are computed and before ``backward()`` / ``step()`` (and again with ``params``
    after ``backward()``): the parameters then keep their last finite values, nothing of the unit is written,
    and the distilled set on disk keeps the units finished before.

    Args:
        losses (dict[str, Tensor | float]): The loss terms of the step (scalars).
        where (str): The unit and iteration, e.g. ``'IDC instance 2 of 3 (t20), iteration 8 (step 2 of 6)'``.
        params (iterable[Tensor]): Parameters whose ``.grad`` must be finite too (those without ``.grad`` are
            skipped; checked only when every loss is finite). Default: ``()``.

    Raises:
        FloatingPointError: naming ``where``, the non-finite loss terms (or a non-finite gradient) and the value
            of every loss term.
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
    """1-based ``current_iter`` of process ``rank`` -> (unit index, 1-based step inside the unit).

    Rank k of W processes takes the units ``k, k + W, k + 2W, ...``: its j-th unit is iterations
    ``j * T + 1 .. (j + 1) * T`` of its own loop (T = ``iters_per_unit``).

    Args:
        current_iter (int): The process's iteration, 1-based.
        iters_per_unit (int): T, iterations of one unit.
        rank (int): k, this process. Default: 0.
        world_size (int): W, the processes. Default: 1.

    Returns:
        tuple[int, int]: ``(unit index, step)``: the 0-based unit (may be past the last unit: the caller checks)
        and the 1-based step in [1, T].
    """
    local, step = divmod(current_iter - 1, iters_per_unit)
    return local * world_size + rank, step + 1


def locate_group(current_iter, iters_per_unit, rank=0, world_size=1, units_per_step=1):
    """1-based ``current_iter`` of process ``rank`` -> (the K unit indices optimised together, 1-based step).

    Rank k takes the units ``k, k + W, k + 2W, ...`` (as :func:`locate`); its j-th group of K = ``units_per_step``
    of them runs at iterations ``j * T + 1 .. (j + 1) * T`` of its own loop. The last group may name indices past
    the last unit (the caller drops them). K = 1 gives ``[locate(...)[0]]``.

    Args:
        current_iter (int): The process's iteration, 1-based.
        iters_per_unit (int): T, iterations of one group.
        rank (int): k, this process. Default: 0.
        world_size (int): W, the processes. Default: 1.
        units_per_step (int): K, units optimised together. Default: 1.

    Returns:
        tuple[list[int], int]: ``(unit indices, step)``: the K 0-based units of the group, in increasing order,
        and the 1-based step in [1, T].
    """
    group, step = divmod(current_iter - 1, iters_per_unit)
    return [(group * units_per_step + m) * world_size + rank for m in range(units_per_step)], step + 1

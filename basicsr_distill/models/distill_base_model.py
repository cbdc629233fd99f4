"""Shared orchestration of the distillation models (IDC, and the methods to come).

A distillation run is a sequence of *units of work* (an IDC instance, a GSDD class, a diffusion stage), each
``iters_per_unit`` iterations of BasicSR's train loop. The unit and the step inside it are derived from
``current_iter`` alone, so BasicSR's shuffling sampler, restarts and ``--auto_resume`` cannot reorder or repeat
work; units already in the distilled set on disk are skipped; each unit is written through the one distilled-set
writer (``basicsr_distill.distilled_set``).
"""
import math
import numbers
import os
import os.path as osp
import time
from collections import OrderedDict

import torch

from basicsr.archs import build_network
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger
from basicsr_distill.utils.checkpoint import load_pretrained


#: Options whose default is a string but which also take None (``~``): a diffusers folder without subfolder.
_NULLABLE = frozenset({'distill.dit.subfolder', 'distill.vae.subfolder'})


def _check_option_type(default, value, name):
    """``value`` checked against the type of ``default`` (bool, int, float or str); returns it normalised.

    Ints are accepted for floats (returned as float); integral floats for ints (returned as int, e.g. YAML's
    ``!!float 1e4``); a bool is never a number and a number never a bool. Other defaults accept anything.

    Raises:
        ValueError: naming the option ``name``, the expected type and the value given.
    """
    if default is None or not isinstance(default, (bool, int, float, str)) or (value is None and name in _NULLABLE):
        return value
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), 'a bool (true / false)'
    elif isinstance(default, int):
        ok, expected = False, 'an int'
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            ok, value = True, int(value)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and \
                float(value).is_integer():
            ok, value = True, int(value)
    elif isinstance(default, float):
        ok, expected = isinstance(value, numbers.Real) and not isinstance(value, bool), 'a number (float or int)'
        value = float(value) if ok else value
    else:
        ok, expected = isinstance(value, str), 'a string'
    if ok:
        return value
    hint = ''
    if isinstance(value, str) and not isinstance(default, (bool, str)):
        hint = ' (PyYAML reads 1e-3 as a string: write 1.0e-3 or !!float 1e-3)'
    raise ValueError(f'option {name} must be {expected} like its default {default!r}, got {value!r} '
                     f'({type(value).__name__}){hint}')


def merge_options(defaults, given, prefix='distill'):
    """``defaults`` updated by ``given`` (nested dicts merged), with the keys and types checked.

    A value whose default is a bool, an int, a float or a str must be of that type (see
    :func:`_check_option_type`: ints are accepted for floats, integral floats for ints); defaults that are None,
    lists, or empty dicts accept any value; non-empty dict defaults are merged key by key.

    Raises:
        ValueError: ``given`` is not a mapping, an unknown key, or a value of the wrong type; the message names the
            option (``distill.<key>``).
    """
    if given is not None and not isinstance(given, dict):
        raise ValueError(f'option {prefix} must be a mapping of options, got {given!r} ({type(given).__name__})')
    out = dict(defaults)
    for key, value in (given or {}).items():
        if key not in defaults:
            raise ValueError(f'unknown option {prefix}.{key}; known: {sorted(defaults)}')
        if isinstance(defaults[key], dict) and defaults[key] and isinstance(value, dict):
            out[key] = merge_options(defaults[key], value, f'{prefix}.{key}')
        else:
            out[key] = _check_option_type(defaults[key], value, f'{prefix}.{key}')
    return out


class DistillBaseModel(BaseModel):
    """Base class: frozen networks, seeded per-unit generators, progress with ETA, unit-level save / resume.

    Subclasses implement ``optimize_parameters(current_iter)`` and ``unit_state()`` / ``load_unit_state()``.
    """

    def __init__(self, opt):
        super().__init__(opt)
        self.logger = get_root_logger()
        self.log_dict = OrderedDict()
        self.seed = int(opt.get('manual_seed') or 0)
        self._pending_unit_state = None
        self._unit_times = []
        self.writer = None  # subclasses: the DistilledSetWriter of the output folder
        self.unit_names = []  # subclasses: ids of the units that write pairs, in order

    # ----------------------------------------------------------------------------------------- networks
    def build_frozen_network(self, key):
        """Build ``opt[network_<key>]``, load ``path.pretrain_network_<key>`` strictly, eval mode, no gradients.

        Raises:
            ValueError: if the network or its weights path is not given.
        """
        net_opt = self.opt.get(f'network_{key}')
        if net_opt is None:
            raise ValueError(f'option network_{key} is required')
        net = build_network(net_opt)
        path = self.opt['path'].get(f'pretrain_network_{key}')
        if not path:
            raise ValueError(f'option path.pretrain_network_{key} is required (a local checkpoint path)')
        if self.opt['path'].get('resume_state') and not osp.isfile(path) and 'models' in path:
            raise ValueError(f'on resume BasicSR replaced path.pretrain_network_{key} by {path}; add network_{key} '
                             f'to path.ignore_resume_networks in the option file')
        load_pretrained(net, path, param_key=self.opt['path'].get(f'param_key_{key}', 'auto'),
                        strict=self.opt['path'].get(f'strict_load_{key}', True))
        net = net.to(self.device).eval()
        for param in net.parameters():
            param.requires_grad_(False)
        self.logger.info(f'network_{key}: {type(net).__name__} loaded from {path}')
        return net

    # ----------------------------------------------------------------------------------------- guards
    @staticmethod
    def check_finite(losses, where, params=()):
        """Stop on a NaN or infinite loss (or gradient) before the optimiser step, naming where it happened.

        Call it after the losses are computed and before ``backward()`` / ``step()`` (and again with ``params``
        after ``backward()``): the parameters then keep their last finite values, nothing of the unit is written,
        and the distilled set on disk keeps the units finished before.

        Args:
            losses (dict[str, Tensor | float]): The loss terms of the step (scalars).
            where (str): The unit and iteration, e.g. ``'IDC instance 2 of 3 (t20), iteration 8 (step 2 of 6)'``.
            params (iterable[Tensor]): Parameters whose ``.grad`` must be finite too. Default: none.

        Raises:
            FloatingPointError: naming ``where``, the non-finite terms and the value of every loss term.
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

    # ----------------------------------------------------------------------------------------- units
    @staticmethod
    def locate(current_iter, iters_per_unit):
        """1-based ``current_iter`` -> (unit index, 1-based step inside the unit)."""
        unit, step = divmod(current_iter - 1, iters_per_unit)
        return unit, step + 1

    def unit_generator(self, unit_index, salt=0):
        """A CPU ``torch.Generator`` seeded from (manual_seed, unit, salt); the global RNG is never touched."""
        return torch.Generator().manual_seed((self.seed * 1000003 + unit_index * 7919 + salt) % (2**63 - 1))

    def log_progress(self, done_index, num_units, name, seconds, remaining):
        """Log 'unit i of N' with the unit's time and an ETA from the mean time of the units computed so far."""
        self._unit_times.append(seconds)
        eta = sum(self._unit_times) / len(self._unit_times) * remaining
        self.logger.info(f'[{type(self).__name__}] unit {done_index + 1} of {num_units} ({name}) written in '
                         f'{seconds:.1f} s; {remaining} left, ETA {time.strftime("%H:%M:%S", time.gmtime(eta))}')

    # ----------------------------------------------------------------------------------------- BasicSR API
    def feed_data(self, data):
        """The loop's item is only a tick; the unit's data is loaded by the model (see the module docstring)."""

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        """Learning rates are per unit (see the subclass); BasicSR's global schedulers are not used."""

    def get_current_learning_rate(self):
        return [group['lr'] for opt in self.optimizers for group in opt.param_groups] or [0.0]

    def unit_state(self):
        """State of the unit in progress (tensors, numbers, strings only), or None between units."""
        return None

    def load_unit_state(self, state):
        """Restore what :meth:`unit_state` returned (called when the unit restarts after a resume)."""

    def save(self, epoch, current_iter):
        """Save the unit in progress as a BasicSR training state (atomically); -1 finalises the distilled set."""
        if current_iter == -1:
            self.finalize()
            return
        state = {'epoch': epoch, 'iter': current_iter, 'optimizers': [], 'schedulers': [],
                 'unit_state': self.unit_state()}
        path = osp.join(self.opt['path']['training_states'], f'{current_iter}.state')
        tmp = f'{path}.tmp'
        torch.save(state, tmp)
        os.replace(tmp, path)

    def resume_training(self, resume_state):
        """Keep the saved unit state until the unit it belongs to starts again."""
        self._pending_unit_state = resume_state.get('unit_state')

    def take_pending_state(self, unit_index):
        """The resumed state of ``unit_index`` if there is one (consumed once)."""
        state, self._pending_unit_state = self._pending_unit_state, None
        if state is not None and state.get('unit_index') == unit_index:
            return state
        return None

    def commit_unit(self, index, name, pairs, seconds):
        """Write a finished unit's pairs, log progress with ETA, finalise the set after the last unit."""
        self.writer.write_unit(name, pairs)
        remaining = sum(not self.writer.is_finished(n) for n in self.unit_names)
        self.log_progress(index, len(self.unit_names), name, seconds, remaining)
        self.optimizers = []
        if remaining == 0:
            self.finalize()

    def finalize(self):
        """Mark the distilled set complete once every unit is written (also called at the end of training)."""
        if self.writer is not None and all(self.writer.is_finished(n) for n in self.unit_names):
            self.writer.finalize()

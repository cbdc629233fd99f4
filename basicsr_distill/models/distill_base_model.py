"""Shared orchestration of the distillation models: units of work, seeded generators, unit-level save / resume.

A run is a sequence of *units* (an IDC instance, a GSDD class, a diffusion stage) of ``steps_per_unit`` (T)
iterations each; the unit and step are derived from ``current_iter`` alone, so restarts cannot reorder or repeat work,
and units already on disk are skipped. With W processes rank k takes units ``u % W == k``, in groups of
``units_per_step`` (K); a unit's random draws are seeded by (``manual_seed``, unit), never by the rank. Rank 0 writes
``distill.json``, rank k >= 1 a shard merged at the end, and one ``training_states/<iter>.state`` holds every rank's
unit state. Collectives come from ``mmengine.dist`` (no-ops in one process). See docs/DesignConvention.md.
"""
import os
import os.path as osp
import time
import torch
from collections import OrderedDict
from mmengine import dist as mmdist

from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info
from basicsr_distill.distilled_set import DistilledSetWriter
from basicsr_distill.models.distill_units import check_finite, locate, locate_group, to_cpu, unit_generator
from basicsr_distill.utils.checkpoint import load_frozen_network
from basicsr_distill.utils.file_io import torch_save_atomic
from basicsr_distill.utils.options import check_path_keys


class DistillBaseModel(BaseModel):
    """Base class of the distillation models; :meth:`optimize_parameters` runs the step sequence every method shares.

    One iteration: locate the units (:meth:`locate_units`), skip finished ones, start them (:meth:`start_unit`, with
    the resumed state if any), step them (:meth:`step_units`), and at the last step (or an early finish) write their
    pairs (:meth:`finish_unit` -> :meth:`commit_unit`). Subclasses set ``unit_names``, ``steps_per_unit`` and
    ``writer`` and implement the hooks :meth:`start_unit`, :meth:`step_unit`, :meth:`finish_unit`, :meth:`unit_state`.

    Attributes:
        rank (int), world_size (int): This process and the number of processes (0 and 1 in one process).

    Raises:
        ValueError: A ``path.pretrain_network_<net>`` without ``network_<net>`` (``utils.options.check_path_keys``);
            with several processes, ``num_gpu`` that does not fit the process group (CUDA asked for where unavailable,
            CPU under ``nccl``, more processes on a node than GPUs).
    """

    def __init__(self, opt):
        check_path_keys(opt)  # a misspelt path.pretrain_network_<net> would be ignored by BasicSR
        super().__init__(opt)
        self.logger = get_root_logger()
        self.log_dict = OrderedDict()
        self.seed = int(opt.get('manual_seed') or 0)
        self.rank, self.world_size = get_dist_info() if opt.get('dist') else (0, 1)
        if self.world_size > 1:
            self._check_dist_device()
        self._pending_unit_state = []
        self._unit_times = []
        self.writer = None  # subclasses: the DistilledSetWriter of the output folder (open_writer)
        self.unit_names = []  # subclasses: ids of the units that write pairs, in order
        self.steps_per_unit = 1  # subclasses: T, the iterations of one unit
        self.units_per_step = 1  # subclasses: K, units of this process optimised together (IDC instances_per_step)
        self.units = []  # the units in progress (dataclasses of the method), empty between units

    @property
    def unit(self):
        """The unit in progress (the first if several), None between units; setting it replaces ``units``."""
        return self.units[0] if self.units else None

    @unit.setter
    def unit(self, value):
        self.units = [] if value is None else [value]

    def _check_dist_device(self):
        """The device fits the process group (see the class docstring)."""
        backend = torch.distributed.get_backend()
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise ValueError(f'option num_gpu={self.opt["num_gpu"]} asks for CUDA, which is not available here: set '
                             'num_gpu: 0 (or auto) to run the processes on the CPU (gloo)')
        if self.device.type == 'cpu' and backend == 'nccl':
            raise ValueError('option num_gpu: 0 runs on the CPU, but the process group uses nccl (CUDA is available): '
                             "set num_gpu: auto to use one GPU per process, or hide the GPUs (CUDA_VISIBLE_DEVICES='') "
                             'to run on the CPU with gloo')
        local = int(os.environ.get('LOCAL_WORLD_SIZE', 1))
        if self.device.type == 'cuda' and local > torch.cuda.device_count():
            raise ValueError(f'{local} processes on this node but {torch.cuda.device_count()} GPU(s): use '
                             f'torchrun --nproc_per_node={torch.cuda.device_count()} (one GPU per process)')

    # ----------------------------------------------------------------------------------------- networks
    def build_frozen_network(self, key):
        """Build ``opt[network_<key>]`` with ``path.pretrain_network_<key>`` loaded, frozen, on ``self.device``.

        Args:
            key (str): The option suffix (``'t'``, ``'up'``, ``'g'``, ``'f'``).

        Returns:
            nn.Module: The network in eval mode without gradients (``utils.checkpoint.load_frozen_network``).

        Raises:
            ValueError: The network or its path is not given, or BasicSR replaced the path on resume (add the network to
                ``path.ignore_resume_networks``).
            KeyError, FileNotFoundError, ValueError, RuntimeError: As ``load_frozen_network``.
        """
        net_opt = self.opt.get(f'network_{key}')
        if net_opt is None:
            raise ValueError(f'option network_{key} is required')
        path = self.opt['path'].get(f'pretrain_network_{key}')
        if not path:
            raise ValueError(f'option path.pretrain_network_{key} is required (a local checkpoint path)')
        if self.opt['path'].get('resume_state') and not osp.isfile(path) and 'models' in path:
            raise ValueError(f'on resume BasicSR replaced path.pretrain_network_{key} by {path}; add network_{key} '
                             f'to path.ignore_resume_networks in the option file')
        net = load_frozen_network(self.opt, key, self.device)
        self.logger.info(f'network_{key}: {type(net).__name__} loaded from {path}')
        return net

    @torch.no_grad()
    def check_network_scale(self, net, key, size=16):
        """Check with one tiny forward that ``net`` up-samples by the option ``scale``, before any unit is computed.

        Args:
            net (nn.Module): The network that makes the HR side, on ``self.device``.
            key (str): Its option suffix, for the message.
            size (int): Side of the zero (1, 3, size, size) test input. Default: 16.

        Raises:
            ValueError: The output is not ``scale`` times the input (naming ``scale``, ``network_<key>``, the factor).
        """
        scale = int(self.opt['scale'])
        out = net(torch.zeros(1, 3, size, size, device=self.device))
        found = tuple(out.shape[-2:])
        if found != (size * scale, size * scale):
            factor = f'x{found[0] / size:g}' if found[0] == found[1] else f'{size}x{size} -> {found[0]}x{found[1]}'
            raise ValueError(f'option scale is {scale}, but network_{key} ({type(net).__name__}) up-samples {factor}: '
                             f'set scale to its factor or give a x{scale} network')

    # ----------------------------------------------------------------------------------------- guards
    check_finite = staticmethod(check_finite)  # basicsr_distill.models.distill_units

    # ----------------------------------------------------------------------------------------- units
    locate = staticmethod(locate)  # basicsr_distill.models.distill_units
    locate_group = staticmethod(locate_group)

    def units_per_rank(self, num_units):
        """Units of the busiest process: ``ceil(num_units / world_size)``."""
        return -(-num_units // self.world_size)

    def groups_per_rank(self, num_units):
        """Groups of K units of the busiest process: ``ceil(units_per_rank(num_units) / K)``."""
        return -(-self.units_per_rank(num_units) // self.units_per_step)

    def iters_needed_text(self, num_units, what, per_unit, option):
        """The iterations each process needs, as text for ``train.total_iter`` messages.

        ``'N <what> x <option>=T = N*T'`` in one process with K = 1; else the groups G of :meth:`groups_per_rank` spelt
        out, e.g. ``'ceil(N <what> / W processes) = G x <option>=T = G*T'``.

        Args:
            num_units (int): N, units of the whole run.
            what (str): Their name in the text (e.g. ``'images'``).
            per_unit (int): T, iterations per unit.
            option (str): The option T comes from (e.g. ``'distill.iters_per_instance'``).
        """
        k = self.units_per_step
        if self.world_size == 1 and k == 1:
            return f'{num_units} {what} x {option}={per_unit} = {num_units * per_unit}'
        count = f'{num_units} {what}' if self.world_size == 1 else f'{num_units} {what} / {self.world_size} processes'
        if k > 1:
            count = f'ceil({count} / {k} per step)' if self.world_size == 1 else f'ceil(ceil({count}) / {k} per step)'
        else:
            count = f'ceil({count})'
        groups = self.groups_per_rank(num_units)
        return f'{count} = {groups} x {option}={per_unit} = {groups * per_unit}'

    def log_idle_iterations(self, needed):
        """Log how many iterations of ``train.total_iter`` past ``needed`` are idle (several processes only)."""
        total = int(self.opt['train']['total_iter'])
        if self.world_size > 1 and total > needed:
            self.logger.info(f'{self.world_size} processes: each needs {needed} of train.total_iter={total} '
                             f'iterations; iterations {needed + 1}-{total} are idle (--force_yml '
                             f'train:total_iter={needed} skips them)')

    @classmethod
    def run_output_folders(cls, opt):
        """The folders a run writes besides its experiment folder, for ``utils.run_lock.output_folders``.

        Args:
            opt (dict): Options parsed by BasicSR (``path.experiments_root`` set).

        Returns:
            list[dict]: ``{'key', 'folder' (absolute), 'what', 'hint', 'lock' (bool)}`` per folder
            (here ``path.distilled_root``).
        """
        root = opt['path'].get('distilled_root')
        return [{
            'key': 'distilled_root',
            'folder': osp.abspath(cls.distilled_root(opt)),
            'what': 'option path.distilled_root' + ('' if root else ', default <experiments_root>/distilled'),
            'hint': 'Wait for it to end, or set path.distilled_root to another folder.',
            'lock': True
        }]

    @staticmethod
    def distilled_root(opt):
        """``path.distilled_root``, default ``<experiments_root>/distilled``."""
        return opt['path'].get('distilled_root') or osp.join(opt['path']['experiments_root'], 'distilled')

    def open_writer(self, root, **kwargs):
        """The :class:`DistilledSetWriter` of ``root`` for this process; every rank must call it (barrier).

        Rank 0 opens ``distill.json`` first (merging shards an interrupted run left), then rank k >= 1 opens shard k.
        With ``unit_sources`` a finished unit whose images changed is computed again; under ``--auto_resume`` only units
        whose iterations are still ahead, the others are refused.

        Args:
            root (str): The distilled-set folder.
            **kwargs: The other arguments of :class:`DistilledSetWriter`; ``unit_order``, ``world_size`` are set here.

        Returns:
            DistilledSetWriter: The writer of ``distill.json`` (rank 0) or of this rank's shard.

        Raises:
            ValueError, FileExistsError, FileNotFoundError, RuntimeError: As :class:`DistilledSetWriter`.
            OSError: A source image cannot be read to hash it (named).
        """
        kwargs.update(unit_order=self.unit_names, world_size=self.world_size)
        sources = kwargs.get('unit_sources')
        if sources is not None and self.rank != 0:
            mine = set(self.unit_names[self.rank::self.world_size])
            kwargs['unit_sources'] = {u: v for u, v in sources.items() if u in mine}
        resume = self.opt['path'].get('resume_state')
        if sources is not None and resume and self.rank == 0:
            done = self._resumed_iteration(resume)
            kwargs['recompute_changed'] = [u for i, u in enumerate(self.unit_names) if self.first_iteration(i) > done]
            kwargs['changed_hint'] = (
                f'Resuming from {resume} (iteration {done}) cannot compute them again: their iterations are past. '
                'Rerun without --auto_resume (the units whose images did not change are kept, these are computed '
                f'again), or delete or rename {root}, or restore the images.')
        writer = DistilledSetWriter(root, **kwargs) if self.rank == 0 else None
        if self.world_size > 1:
            mmdist.barrier()
        if writer is None:
            writer = DistilledSetWriter(root, shard=self.rank, **kwargs)
        return writer

    def first_iteration(self, unit_index):
        """The first (1-based) iteration of unit ``unit_index`` for its process: ``(i // W // K) * T + 1``.

        Follows :meth:`locate_units`; a method that overrides :meth:`locate_unit` overrides this too.
        """
        return (unit_index // self.world_size // self.units_per_step) * self.steps_per_unit + 1

    @staticmethod
    def _resumed_iteration(path):
        """The iteration of the training state ``path`` (its name, else its content)."""
        stem = osp.splitext(osp.basename(path))[0]
        if stem.isdigit():
            return int(stem)
        try:
            return int(torch.load(path, map_location='cpu', weights_only=True)['iter'])
        except Exception:  # unreadable here: BasicSR's own load names it; assume every unit is past
            return float('inf')

    def unit_generator(self, unit_index, salt=0):
        """A CPU ``torch.Generator`` seeded from (manual_seed, unit, salt); the global RNG is not touched."""
        return unit_generator(self.seed, unit_index, salt)

    def log_progress(self, done_index, num_units, name, seconds, remaining):
        """Log 'unit i of N' with its time (s) and an ETA (mean unit time x ``ceil(remaining / K)``)."""
        self._unit_times.append(seconds)  # with K units per step a unit's time is its group's: ceil(left / K) groups
        eta = sum(self._unit_times) / len(self._unit_times) * -(-remaining // self.units_per_step)
        where = f' on rank {self.rank} of {self.world_size}' if self.world_size > 1 else ''
        self.logger.info(f'[{type(self).__name__}] unit {done_index + 1} of {num_units} ({name}) written in '
                         f'{seconds:.1f} s; {remaining} left{where}, ETA '
                         f'{time.strftime("%H:%M:%S", time.gmtime(eta))}')

    # ----------------------------------------------------------------------------------------- the step sequence
    def locate_unit(self, current_iter):
        """``current_iter`` (1-based) -> (unit index, 1-based step) for this process, or None for no unit.

        Default: :meth:`locate` (rank k of W takes units k, k + W, ...); the index may be past the last unit. Used when
        ``units_per_step`` is 1.
        """
        return self.locate(current_iter, self.steps_per_unit, self.rank, self.world_size)

    def locate_units(self, current_iter):
        """``current_iter`` -> (unit indices stepped together, 1-based step), or None (indices may be past the end)."""
        if self.units_per_step == 1:
            located = self.locate_unit(current_iter)
            return None if located is None else ([located[0]], located[1])
        return self.locate_group(current_iter, self.steps_per_unit, self.rank, self.world_size, self.units_per_step)

    def start_unit(self, index, resumed):
        """Hook: set up unit ``index`` (0-based) and return its state object (``index``, ``name``, ``t0`` at least).

        Args:
            index (int): The unit, in ``unit_names`` order.
            resumed (dict | None): What :meth:`unit_state` returned for it before a restart (on the CPU), or None.
        """
        raise NotImplementedError

    def step_unit(self, unit, step, current_iter):
        """Hook: one step of ``unit`` (``step`` in [1, ``steps_per_unit``]); set ``self.log_dict``.

        Returns:
            bool: True if the unit is complete early (e.g. an image with no patch).

        Raises:
            FloatingPointError: A non-finite loss or gradient (:meth:`check_finite`).
        """
        raise NotImplementedError

    def step_units(self, units, step, current_iter):
        """Hook: one step of every unit in ``units``; default :meth:`step_unit` on each.

        An override may share work between units (IDC: one teacher pass for K instances) but must give each unit the
        update it would get alone. Returns one bool per unit (as :meth:`step_unit`).
        """
        return [self.step_unit(unit, step, current_iter) for unit in units]

    def finish_unit(self, unit):
        """Hook: the finished unit's pairs as :meth:`DistilledSetWriter.write_unit` takes them.

        Returns:
            list[dict]: ``{'name', 'lq', 'gt', 'info'}``: ``lq`` (h, w, 3) and ``gt`` (scale h, scale w, 3) float RGB
            numpy arrays in [0, 1].
        """
        raise NotImplementedError

    def optimize_parameters(self, current_iter):
        """One iteration of the step sequence (see the class docstring); clears ``self.log_dict`` first.

        Raises:
            FloatingPointError: A non-finite loss or gradient; nothing of the unit is written.
            ValueError, OSError: From :meth:`commit_unit` (pairs the writer refuses, a failed write).
        """
        located = self.locate_units(current_iter)
        self.log_dict.clear()  # a step that computes no loss logs none (not the previous step's)
        if located is None:
            return
        indices, step = located
        todo = [i for i in indices if i < len(self.unit_names) and not self.writer.is_finished(self.unit_names[i])]
        if not todo:
            return
        if [unit.index for unit in self.units] != todo:
            self.units = [self.start_unit(i, self.take_pending_state(i)) for i in todo]
        done = self.step_units(self.units, step, current_iter)
        finished = [unit for unit, early in zip(self.units, done) if early or step == self.steps_per_unit]
        self.units = [unit for unit in self.units if unit not in finished]
        for unit in finished:
            pairs = self.finish_unit(unit)
            self.commit_unit(unit.index, unit.name, pairs, time.time() - unit.t0)

    # ----------------------------------------------------------------------------------------- BasicSR API
    def feed_data(self, data):
        """The loop item is only a tick: each model loads its unit's data itself."""

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        """A no-op: learning rates are per unit, not BasicSR's global schedulers."""

    def get_current_learning_rate(self):
        """The ``lr`` of every parameter group of ``self.optimizers``, or ``[0.0]`` between units."""
        return [group['lr'] for opt in self.optimizers for group in opt.param_groups] or [0.0]

    def unit_state(self):
        """Hook: the state of the unit(s) in progress, saved by :meth:`save` and given back to :meth:`start_unit`.

        Returns:
            dict | list[dict] | None: Tensors, numbers and strings with its ``unit_index`` (a list for several units),
            or None between units (this default).
        """
        return None

    def save(self, epoch, current_iter):
        """Save the unit state as ``path.training_states/<current_iter>.state`` (atomically); -1 calls :meth:`finalize`.

        With several processes every rank calls it; rank 0 gathers the states and alone writes the file.

        Raises:
            OSError: Writing fails (the previous file is kept).
            ValueError: (-1) as :meth:`finalize`.
        """
        if current_iter == -1:
            self.finalize()
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [],
            'schedulers': [],
            'units_per_step': self.units_per_step,
            'unit_state': self.unit_state()
        }
        if self.world_size > 1:
            states = mmdist.gather_object(to_cpu(state.pop('unit_state')), dst=0)
            if self.rank != 0:
                return
            state.update(unit_state=None, unit_states=states, world_size=self.world_size)
        path = osp.join(self.opt['path']['training_states'], f'{current_iter}.state')
        torch_save_atomic(path, state, tmp=f'{path}.tmp')  # BasicSR's --auto_resume parses the names there

    def resume_training(self, resume_state):
        """Keep this rank's saved unit state until its unit starts again.

        Raises:
            ValueError: The state was saved with another number of processes or another ``units_per_step``, naming the
                file (the iterations map to other units then).
        """
        saved = int(resume_state.get('world_size', 1))
        if saved != self.world_size:
            path = self.opt['path'].get('resume_state') or 'the training state'
            raise ValueError(f'{path} was saved by a run of {saved} process(es), this run has {self.world_size}: '
                             f'resume with torchrun --nproc_per_node={saved} ... --launcher pytorch (or '
                             f'{"--launcher none" if saved == 1 else "the same number"}), or rerun without '
                             '--auto_resume: the units already in the distilled set are kept, only the others are '
                             'computed')
        saved_k = int(resume_state.get('units_per_step', 1))
        if saved_k != self.units_per_step:
            path = self.opt['path'].get('resume_state') or 'the training state'
            raise ValueError(f'{path} was saved by a run with {saved_k} unit(s) per step, this run has '
                             f'{self.units_per_step} (distill.instances_per_step): the iteration maps to other units '
                             f'then. Resume with the same value, or rerun without --auto_resume: the units already '
                             'in the distilled set are kept, only the others are computed')
        states = resume_state.get('unit_states') if saved > 1 else [resume_state.get('unit_state')]
        state = states[self.rank]
        self._pending_unit_state = [] if state is None else list(state) if isinstance(state, list) else [state]

    def take_pending_state(self, unit_index):
        """The resumed state of ``unit_index`` with its tensors on the CPU (consumed once), or None."""
        pending = self._pending_unit_state or []
        for j, state in enumerate(pending):
            if state is not None and state.get('unit_index') == unit_index:
                return to_cpu(pending.pop(j))
        return None

    def commit_unit(self, index, name, pairs, seconds):
        """Write a finished unit's pairs, log progress, drop its optimisers; finalise after the last unit (one process).

        Args:
            index (int): The unit (0-based).
            name (str): Its id in ``unit_names``.
            pairs (list[dict]): Its pairs (see :meth:`finish_unit`).
            seconds (float): Its wall time (s).

        Raises:
            TypeError, ValueError, OSError: As :meth:`DistilledSetWriter.write_unit`; ValueError as :meth:`finalize`.
        """
        self.writer.write_unit(name, pairs)
        mine = self.unit_names[self.rank::self.world_size]
        remaining = sum(not self.writer.is_finished(n) for n in mine)
        self.log_progress(index, len(self.unit_names), name, seconds, remaining)
        self.optimizers = []
        if remaining == 0 and self.world_size == 1:
            self.finalize()

    def finalize(self):
        """Mark the distilled set complete once every unit is written, adding :meth:`summary_fields`.

        With several processes (end of training) rank 0 merges the shards after a barrier. No-op without a writer.

        Raises:
            ValueError: A shard of another run or with a clashing pair name, or :meth:`summary_fields` not a dict or
                using a reserved field.
        """
        if self.writer is None:
            return
        if self.world_size > 1:
            mmdist.barrier()
            if self.rank != 0:
                return
            self.writer.merge_shards()
        if all(self.writer.is_finished(n) for n in self.unit_names):
            self.writer.finalize(None if self.writer.complete else self.summary_fields())

    def summary_fields(self):
        """Hook: extra JSON fields of ``distill.json`` when the set is complete, or None (this default)."""
        return None

"""Shared orchestration of the distillation models (IDC, and the methods to come).

A distillation run is a sequence of *units of work* (an IDC instance, a GSDD class, a diffusion stage), each
``iters_per_unit`` iterations of BasicSR's train loop. The unit and the step inside it are derived from
``current_iter`` alone, so BasicSR's shuffling sampler, restarts and ``--auto_resume`` cannot reorder or repeat
work; units already in the distilled set on disk are skipped; each unit is written through the one distilled-set
writer (``basicsr_distill.distilled_set``).

Multi-process runs (``torchrun --nproc_per_node=W basicsr_distill/train.py -opt ... --launcher pytorch``): rank k
takes the units with index ``u % W == k``; its local iteration ``i`` belongs to unit ``((i - 1) // T) * W + k``
(:meth:`DistillBaseModel.locate`), so every rank runs ``ceil(units / W) * T`` iterations of work and idles after
them. A unit's random draws come from generators seeded by (``manual_seed``, unit), never from the rank, so a unit
gives the same pairs whichever rank computes it. Rank 0 writes ``distill.json``, rank k >= 1 a shard that rank 0
merges at the end (``distilled_set``); the training states of every rank are gathered into the one
``training_states/<iter>.state`` that rank 0 writes, so ``--auto_resume`` resumes every rank from the same iteration.
Collectives come from ``mmengine.dist`` (no-ops in a single process).
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
    """Base class: frozen networks, seeded per-unit generators, progress with ETA, unit-level save / resume, and the
    step sequence every method shares (:meth:`optimize_parameters`).

    The sequence of one iteration: locate the unit and the step (:meth:`locate_unit`), skip finished or
    out-of-range units, start the unit at its first step seen in this process (:meth:`start_unit`, with the resumed
    state when ``--auto_resume`` saved one), take one step (:meth:`step_unit`), and at the unit's last step (or when
    ``step_unit`` says the unit is done early) write its pairs (:meth:`finish_unit` -> :meth:`commit_unit`).

    Subclasses set ``unit_names`` (one per unit, in order), ``steps_per_unit`` and ``writer`` in ``__init__`` and
    implement the hooks :meth:`start_unit`, :meth:`step_unit`, :meth:`finish_unit` and :meth:`unit_state`; the
    unit in progress is ``self.unit`` (a small dataclass per method with at least ``index``, ``name`` and ``t0``).

    Attributes:
        rank (int), world_size (int): This process and the number of processes (0 and 1 without
            ``--launcher pytorch``).

    Raises:
        ValueError: A ``path`` key that looks like BasicSR's but that nothing reads (``pretrain_network_<net>``
            without ``network_<net>``, see ``utils.options.check_path_keys``); (several processes) ``num_gpu`` does
            not fit the process group: CUDA asked for
            (``num_gpu`` != 0) where it is unavailable, ``num_gpu: 0`` (CPU) under the ``nccl`` backend, or more
            processes on a node than GPUs.
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
        """The unit in progress when one unit runs at a time (``units_per_step`` 1), else the first; None between.

        Setting it (a unit, or None) replaces ``units`` by ``[value]`` (or ``[]``).
        """
        return self.units[0] if self.units else None

    @unit.setter
    def unit(self, value):
        self.units = [] if value is None else [value]

    def _check_dist_device(self):
        """The model's device fits the process group (see the class docstring)."""
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
        """Build ``opt[network_<key>]``, load ``path.pretrain_network_<key>`` (strict by default), frozen, on device.

        The network is built and loaded by :func:`~basicsr_distill.utils.checkpoint.load_frozen_network` (eval mode,
        no gradients; ``path.param_key_<key>`` / ``path.strict_load_<key>`` honoured), with the checks of the option
        file first; the load is logged.

        Args:
            key (str): The option suffix (``'t'``, ``'up'``, ``'g'``, ``'f'``).

        Returns:
            nn.Module: The frozen network on ``self.device``.

        Raises:
            ValueError: if the network or its weights path is not given, or BasicSR replaced the path on resume
                (``path.resume_state`` set and the path, which names ``models``, is not a file); otherwise as
                ``load_frozen_network``.
            KeyError, FileNotFoundError, ValueError, RuntimeError: As ``load_frozen_network`` (unknown network
                type; missing, corrupt or truncated weights file; keys that do not fit the network).
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
        """Check that ``net`` up-samples by the option ``scale``, with one tiny forward, before any unit is computed.

        Args:
            net (nn.Module): The network that makes the HR side (IDC's ``network_up`` or teacher, GSDD's generator).
            key (str): Its option suffix, for the message (``'t'``, ``'up'``, ``'g'``).
            size (int): Side of the zero (1, 3, size, size) float32 test input, on the model's device (``net`` must
                be there too). Default: 16.

        Raises:
            ValueError: The output is not ``scale`` times the input, naming ``scale``, ``network_<key>`` and the
                factor found (without it the first unit would be computed and then refused when written).
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
        """Units of the busiest process: ``ceil(num_units / world_size)``.

        Args:
            num_units (int): Units of the whole run.

        Returns:
            int: The unit count of rank 0 (the busiest).
        """
        return -(-num_units // self.world_size)

    def groups_per_rank(self, num_units):
        """Groups of ``units_per_step`` units of the busiest process (the iterations it needs / T).

        Args:
            num_units (int): Units of the whole run.

        Returns:
            int: ``ceil(ceil(num_units / world_size) / units_per_step)``.
        """
        return -(-self.units_per_rank(num_units) // self.units_per_step)

    def iters_needed_text(self, num_units, what, per_unit, option):
        """'N <what> x <option>=T = X', the iterations needed as text, for ``train.total_iter`` messages.

        With several processes (W) or units per step (K) the count of groups of the busiest process is spelt out:
        ``'ceil(N <what> / W processes) = G x <option>=T = G*T'``, ``'ceil(N <what> / K per step) = ...'`` or
        ``'ceil(ceil(N <what> / W processes) / K per step) = ...'``, G = :meth:`groups_per_rank`.

        Args:
            num_units (int): N, units of the whole run.
            what (str): Their name in the text (e.g. ``'images'``).
            per_unit (int): T, iterations per unit.
            option (str): The option T comes from (e.g. ``'distill.iters_per_instance'``).

        Returns:
            str: The formula and its value (the iterations each process needs).
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
        """Say how many iterations of ``train.total_iter`` this process has no work for (several processes).

        Logs nothing in a single process or when ``train.total_iter`` is at most ``needed``.

        Args:
            needed (int): Iterations this process has work for (e.g. :meth:`groups_per_rank` x T).
        """
        total = int(self.opt['train']['total_iter'])
        if self.world_size > 1 and total > needed:
            self.logger.info(f'{self.world_size} processes: each needs {needed} of train.total_iter={total} '
                             f'iterations; iterations {needed + 1}-{total} are idle (--force_yml '
                             f'train:total_iter={needed} skips them)')

    @classmethod
    def run_output_folders(cls, opt):
        """The folders a run of this model writes besides its experiment folder, for the run lock
        (:func:`basicsr_distill.utils.run_lock.output_folders`): ``path.distilled_root``.

        Args:
            opt (dict): Options parsed by BasicSR (``path.experiments_root`` set).

        Returns:
            list[dict]: ``{'key', 'folder' (absolute), 'what' (option, for messages), 'hint' (for a refusal),
            'lock' (bool)}`` of each folder.
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
        """The :class:`DistilledSetWriter` of ``root`` for this process (``unit_names`` must be set).

        Rank 0 opens it first (creates or resumes ``distill.json``, merges the shards an interrupted run left); after
        a barrier rank k >= 1 opens it as shard k. Units are listed in ``unit_names`` order. With several processes
        every rank must call it (barrier).

        Args:
            root (str): The distilled-set folder.
            **kwargs: The other arguments of :class:`DistilledSetWriter` (``method``, ``scale``, ``source``,
                ``size_control``, ``options``, ...); ``unit_order`` and ``world_size`` are set here (from
                ``unit_names`` and the process group), replacing any given.

        With ``unit_sources`` (``{unit: [source image paths]}``) every unit records the SHA-256 of its images, and a
        finished unit whose images changed since is computed again (:class:`DistilledSetWriter`): on a fresh start
        every such unit; under ``--auto_resume`` (``path.resume_state``) only those whose iterations are still ahead
        of the resumed one, the others are refused (the message says to rerun without ``--auto_resume``). Rank
        k >= 1 hashes the images of its own units only.

        Returns:
            DistilledSetWriter: The writer of ``distill.json`` (rank 0) or of this rank's shard.

        Raises:
            ValueError, FileExistsError, FileNotFoundError, RuntimeError: As :class:`DistilledSetWriter` (invalid
                arguments, a folder of another run or not a distilled set, a shard opened before rank 0, a shard of
                an earlier run left unmerged, changed source images of units that cannot be computed again).
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
        """The first (1-based) iteration of unit ``unit_index`` in the loop of the process that owns it.

        Follows :meth:`locate_units` (rank ``i % W``, groups of K units, T iterations each); a method that overrides
        :meth:`locate_unit` overrides this too.

        Args:
            unit_index (int): The unit (0-based, in ``unit_names`` order).

        Returns:
            int: ``(i // W // K) * T + 1``.
        """
        return (unit_index // self.world_size // self.units_per_step) * self.steps_per_unit + 1

    @staticmethod
    def _resumed_iteration(path):
        """The iteration of the training state ``path`` (BasicSR names them ``<iter>.state``; else read from it)."""
        stem = osp.splitext(osp.basename(path))[0]
        if stem.isdigit():
            return int(stem)
        try:
            return int(torch.load(path, map_location='cpu', weights_only=True)['iter'])
        except Exception:  # unreadable here: BasicSR's own load names it; assume every unit is past
            return float('inf')

    def unit_generator(self, unit_index, salt=0):
        """A CPU ``torch.Generator`` seeded from (manual_seed, unit, salt); the global RNG is never touched.

        Args:
            unit_index (int): The unit (0-based, in ``unit_names`` order).
            salt (int): Distinguishes several generators of one unit. Default: 0.

        Returns:
            torch.Generator: ``unit_generator(self.seed, unit_index, salt)`` (the module function).
        """
        return unit_generator(self.seed, unit_index, salt)

    def log_progress(self, done_index, num_units, name, seconds, remaining):
        """Log 'unit i of N' with the unit's time and an ETA from the mean time of the units computed so far.

        The ETA is the mean of the times logged so far in this process times ``ceil(remaining / units_per_step)``
        (with K units per step a unit's time is its group's); ``seconds`` is added to those times.

        Args:
            done_index (int): The unit just written (0-based; logged 1-based).
            num_units (int): N, units of the whole run.
            name (str): The unit's name.
            seconds (float): Its wall time (s).
            remaining (int): Units of this process not yet written.
        """
        self._unit_times.append(seconds)  # with K units per step a unit's time is its group's: ceil(left / K) groups
        eta = sum(self._unit_times) / len(self._unit_times) * -(-remaining // self.units_per_step)
        where = f' on rank {self.rank} of {self.world_size}' if self.world_size > 1 else ''
        self.logger.info(f'[{type(self).__name__}] unit {done_index + 1} of {num_units} ({name}) written in '
                         f'{seconds:.1f} s; {remaining} left{where}, ETA '
                         f'{time.strftime("%H:%M:%S", time.gmtime(eta))}')

    # ----------------------------------------------------------------------------------------- the step sequence
    def locate_unit(self, current_iter):
        """``current_iter`` -> (unit index, 1-based step inside the unit) for this process; None: no unit.

        Default: :meth:`locate` with ``steps_per_unit`` (rank k of W takes units k, k + W, ...). Used when
        ``units_per_step`` is 1; :meth:`locate_units` otherwise.

        Args:
            current_iter (int): BasicSR's iteration, 1-based.

        Returns:
            tuple[int, int] | None: ``(unit index, step)`` (the index may be past the last unit), or None (an
            override's "no unit at this iteration").
        """
        return self.locate(current_iter, self.steps_per_unit, self.rank, self.world_size)

    def locate_units(self, current_iter):
        """``current_iter`` -> (unit indices optimised together, 1-based step) for this process; None: no unit.

        One unit from :meth:`locate_unit` when ``units_per_step`` is 1, else the group of :meth:`locate_group`.

        Args:
            current_iter (int): BasicSR's iteration, 1-based.

        Returns:
            tuple[list[int], int] | None: ``(unit indices, step)`` (indices past the last unit are the caller's to
            drop), or None when :meth:`locate_unit` gives none.
        """
        if self.units_per_step == 1:
            located = self.locate_unit(current_iter)
            return None if located is None else ([located[0]], located[1])
        return self.locate_group(current_iter, self.steps_per_unit, self.rank, self.world_size, self.units_per_step)

    def start_unit(self, index, resumed):
        """Hook: set up unit ``index`` and return its state object (``index``, ``name``, ``t0`` at least).

        Args:
            index (int): The unit (0-based, in ``unit_names`` order).
            resumed (dict | None): What :meth:`unit_state` returned for this unit before a restart (on the CPU), or
                None for a fresh start.

        Returns:
            object: The unit's state (the method's dataclass), which becomes one of ``self.units``.

        Raises:
            NotImplementedError: Always, here; subclasses implement it.
        """
        raise NotImplementedError

    def step_unit(self, unit, step, current_iter):
        """Hook: one step of ``unit`` (``step`` is 1-based inside it); set ``self.log_dict``.

        Args:
            unit (object): The unit's state (from :meth:`start_unit`).
            step (int): The step in [1, ``steps_per_unit``].
            current_iter (int): BasicSR's iteration, 1-based (for messages and logs).

        Returns:
            bool: True if the unit is complete before ``steps_per_unit`` (e.g. an image with no patch).

        Raises:
            NotImplementedError: Always, here; subclasses implement it (and raise ``FloatingPointError`` through
                :meth:`check_finite` on a non-finite loss or gradient).
        """
        raise NotImplementedError

    def step_units(self, units, step, current_iter):
        """Hook: one step of every unit in ``units`` (all at the same ``step``); set ``self.log_dict``.

        Default: :meth:`step_unit` on each in turn. A method that can share work between units (IDC: one teacher
        pass over the synthetic patches of K instances) overrides it; each unit must still get exactly the update it
        would get alone.

        Args:
            units (list): The units' states (from :meth:`start_unit`), in unit order.
            step (int): The step in [1, ``steps_per_unit``], the same for all.
            current_iter (int): BasicSR's iteration, 1-based.

        Returns:
            list[bool]: Per unit, True if it is complete before ``steps_per_unit``.

        Raises:
            NotImplementedError, FloatingPointError: As :meth:`step_unit`.
        """
        return [self.step_unit(unit, step, current_iter) for unit in units]

    def finish_unit(self, unit):
        """Hook: the finished unit's pairs (``{'name', 'lq', 'gt', 'info'}`` dicts, see ``DistilledSetWriter``).

        Args:
            unit (object): The unit's state (from :meth:`start_unit`), after its last step.

        Returns:
            list[dict]: The pairs, as :meth:`DistilledSetWriter.write_unit` takes them (``lq`` (h, w, 3) and ``gt``
            (scale h, scale w, 3) float numpy arrays, RGB in [0, 1]).

        Raises:
            NotImplementedError: Always, here; subclasses implement it.
        """
        raise NotImplementedError

    def optimize_parameters(self, current_iter):
        """One iteration of the step sequence (see the class docstring); BasicSR's train loop calls it.

        With ``units_per_step`` K > 1 the K units of the iteration's group that are not yet written are started
        together, stepped together (:meth:`step_units`) and written one by one, in unit order, when they finish.
        ``self.log_dict`` is cleared first; an iteration without work (no unit, or all already written) does nothing
        else.

        Args:
            current_iter (int): BasicSR's iteration, 1-based.

        Raises:
            FloatingPointError: From :meth:`step_unit`: a NaN / infinite loss or gradient, before the optimiser step
                (see :meth:`check_finite`); nothing of the unit is written.
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
        """The loop's item is only a tick; the unit's data is loaded by the model (see the module docstring).

        Args:
            data (dict): The dataloader's item (ignored).
        """

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        """Learning rates are per unit (see the subclass); BasicSR's global schedulers are not used (a no-op).

        Args:
            current_iter (int): BasicSR's iteration (ignored).
            warmup_iter (int): BasicSR's warm-up iterations (ignored). Default: -1.
        """

    def get_current_learning_rate(self):
        """The learning rates of the unit's optimisers, for BasicSR's log.

        Returns:
            list[float]: The ``lr`` of every parameter group of ``self.optimizers``, or ``[0.0]`` when there is none
            (between units).
        """
        return [group['lr'] for opt in self.optimizers for group in opt.param_groups] or [0.0]

    def unit_state(self):
        """Hook: state of the unit in progress, saved in the training state by :meth:`save`.

        After a restart each state comes back as ``resumed`` to :meth:`start_unit` of the same unit (the one resume
        path: :meth:`resume_training` -> :meth:`take_pending_state`). This default saves nothing.

        Returns:
            dict | list[dict] | None: The state (tensors, numbers, strings only, with its ``unit_index``), a list of
            them when several units run together, or None between units.
        """
        return None

    def save(self, epoch, current_iter):
        """Save the unit in progress as a BasicSR training state (atomically); -1 finalises the distilled set.

        With several processes (all call it at the same iteration) the units in progress of every rank are gathered
        to rank 0, which alone writes ``<iter>.state`` (``unit_states``: one per rank, ``world_size``).

        Args:
            epoch (int): BasicSR's epoch, recorded in the state.
            current_iter (int): BasicSR's iteration; the state is ``path.training_states/<current_iter>.state``
                (``epoch``, ``iter``, empty ``optimizers`` / ``schedulers``, ``units_per_step``, ``unit_state``).
                -1 (BasicSR's end of training): no state is written, :meth:`finalize` is called.

        Raises:
            OSError: Writing the state fails (the previous file, if any, is kept).
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
        """Keep the saved unit state (this rank's) until the unit it belongs to starts again.

        Args:
            resume_state (dict): The training state BasicSR loaded (see :meth:`save`).

        Raises:
            ValueError: The state was saved by a run with another number of processes, or another
                ``units_per_step`` (``distill.instances_per_step``), naming both and the file: the iteration maps to
                other units then.
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
        """The resumed state of ``unit_index`` if there is one (consumed once), on the CPU.

        BasicSR's ``load_resume_state`` maps a state onto the GPU where CUDA is available; generator states must be
        CPU tensors, and the models move the rest to their device themselves.

        Args:
            unit_index (int): The unit (0-based).

        Returns:
            dict | None: The saved state of that unit with its tensors on the CPU (removed from the pending ones), or
            None if there is none.
        """
        pending = self._pending_unit_state or []
        for j, state in enumerate(pending):
            if state is not None and state.get('unit_index') == unit_index:
                return to_cpu(pending.pop(j))
        return None

    def commit_unit(self, index, name, pairs, seconds):
        """Write a finished unit's pairs, log progress with ETA (this rank's units), finalise after the last unit.

        With several processes the set is finalised at the end of training only (:meth:`finalize`). The unit's
        optimisers are dropped (``self.optimizers`` emptied).

        Args:
            index (int): The unit (0-based).
            name (str): Its name (its id in ``unit_names``).
            pairs (list[dict]): Its pairs (see :meth:`finish_unit`).
            seconds (float): Its wall time (s).

        Raises:
            TypeError, ValueError, OSError: As :meth:`DistilledSetWriter.write_unit` (invalid unit id or pairs, a
                failed write); ValueError also as :meth:`finalize`.
        """
        self.writer.write_unit(name, pairs)
        mine = self.unit_names[self.rank::self.world_size]
        remaining = sum(not self.writer.is_finished(n) for n in mine)
        self.log_progress(index, len(self.unit_names), name, seconds, remaining)
        self.optimizers = []
        if remaining == 0 and self.world_size == 1:
            self.finalize()

    def finalize(self):
        """Mark the distilled set complete once every unit is written (also called at the end of training).

        With several processes every rank calls it at the end of training: after a barrier (every rank has
        committed its units to its shard) rank 0 merges the shards into ``distill.json``, in unit order, and marks
        the set complete. Without a writer this does nothing; :meth:`summary_fields` is added only when the set was
        not complete yet.

        Raises:
            ValueError: From the writer: a shard of another run or with a clashing pair name
                (:meth:`DistilledSetWriter.merge_shards`), or :meth:`summary_fields` not a dict or using a reserved
                field (:meth:`DistilledSetWriter.finalize`).
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
        """Hook: extra top-level fields of ``distill.json`` written when the set is complete (e.g. ``summary``).

        Returns:
            dict | None: The fields (JSON-compatible, not the format's own), or None (this default) for none.
        """
        return None

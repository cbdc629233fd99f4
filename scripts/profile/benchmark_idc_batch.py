"""Benchmark IDC with K instances per step (``distill.instances_per_step``): throughput, memory, the teacher's share.

For each K, in a fresh process (so that each peak memory is its own): build ``IDCModel`` from the option file, start
K instances (images 0..K-1 of the source, repeated if it has fewer), run their assignment rounds (as
``IDCModel.idc_losses`` does them over an instance), then time ``IDCModel.step_units`` on the K instances at a step
after the assignment (all three losses on, one teacher forward and backward over the K instances' x_hat), and
separately the teacher's forward and backward on the same concatenated batch. Prints one table:

    K, synthetic patches per step, instance-iterations per second, speed-up over K = 1, ms per step,
    teacher share of the step, teacher TFLOP/s (from its FLOP count per patch), peak memory

and, with ``--paper-iters``, the projected wall time of ``images x iters_per_instance`` instance-iterations at each
K. A K that runs out of device memory is reported as such (``"oom": true`` in the JSON). Ratios measured in one run
are what carries over between machines. Usage::

    python scripts/profile/benchmark_idc_batch.py [-opt options/distill/idc_demo.yml] [--ks 1 2 4 8 16]
        [--repeats 10] [--random-weights] [--gt-size 256 --stride 16 --ratio 0.2] [--paper-iters 800 20000]

``--random-weights`` builds the teacher with random weights (timing only: no checkpoint needed, e.g. SwinIR-M of
``idc_div2k.yml`` on a GPU machine); ``--dataroot`` / ``--gt-size`` / ``--stride`` / ``--ratio`` override the option
file so that the paper's patch sizes can be timed on the bundled images. Run from the repository root.
"""
import argparse
import json
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import torch

import basicsr_distill  # noqa: F401

# isort: split
from basicsr_distill.models.idc_model import IDCModel
from basicsr_distill.ops.grouping import assign_progressive, assignment_target, nearest_real_in_group, patch_descriptors
from basicsr_distill.utils.checkpoint import build_network
from basicsr_distill.utils.file_io import torch_save_atomic
from basicsr_distill.utils.options import build_model_from_options, read_option_file


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def prepare_options(args, tmp):
    """The option file with the command line's overrides; random teacher weights saved under ``tmp`` if asked."""
    opt = read_option_file(args.opt)
    train = opt['datasets']['train']
    for key, value in (('dataroot_gt', args.dataroot), ('gt_size', args.gt_size), ('stride', args.stride)):
        if value is not None:
            train[key] = value
    if args.ratio is not None:
        opt['distill']['ratio'] = args.ratio
    opt['distill']['instances_per_step'] = 1
    opt['path'].pop('pretrain_network_up', None)
    opt.pop('network_up', None)  # the HR side is not timed
    if args.random_weights:
        torch.manual_seed(0)
        path = osp.join(tmp, 'teacher_random.pth')
        torch_save_atomic(path, {'params': build_network(opt['network_t']).state_dict()})
        opt['path'].update(pretrain_network_t=path, param_key_t='params')
    return opt


def assignment_rounds(model, inst, local_syn):
    """All ``assign_steps`` rounds of ``inst`` from no assignment, as ``IDCModel.idc_losses`` runs them."""
    cfg = model.cfg
    for j in range(1, cfg['assign_steps'] + 1):
        target = assignment_target(j, cfg['assign_steps'], inst.num_syn_patches)
        before = inst.assigned.clone()
        inst.assigned = assign_progressive(
            patch_descriptors(local_syn), inst.centroids, inst.quotas, inst.assigned, target)
        new = torch.nonzero((before < 0) & (inst.assigned >= 0)).squeeze(1)
        if new.numel():
            inst.pair_index[new] = nearest_real_in_group(local_syn, inst.local_real, inst.labels_real, inst.assigned,
                                                         new)


def teacher_flops_per_patch(model, shape):
    """FLOPs of the teacher's forward (to the tapped features) for one (3, h, w) patch, 2 per multiply-add, by
    counting with ``torch.utils.flop_counter``; None where it cannot count."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
        x = torch.zeros(1, *shape, device=model.device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.tap(x)
        return counter.get_total_flops()
    except Exception:  # noqa: BLE001 (an op the counter does not know: report no figure rather than a wrong one)
        return None


def measure(args, k):
    """Run the measurement of one K in this process; returns a dict of figures."""
    with tempfile.TemporaryDirectory() as tmp:
        opt = prepare_options(args, tmp)
        model = build_model_from_options(
            opt, root=tmp, distilled_root=osp.join(tmp, 'distilled'), num_gpu='auto', model_cls=IDCModel)
        dev = model.device
        usable = [i for i in range(model.source.num_instances) if model.source.num_patches(i)]
        if not usable:
            raise ValueError(f'no image of {opt["datasets"]["train"]["dataroot_gt"]} has a patch of the benchmark size')
        insts = []
        for j in range(k):  # images with patches only, repeated if there are fewer than K
            inst = model.start_unit(usable[j % len(usable)], None)
            with torch.no_grad():
                assignment_rounds(model, inst, inst.rlff(model.tap(inst.x_hat)))
            insts.append(inst)
        if dev.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        step = model.cfg['warmup_iters'] + model.cfg['assign_iters'] + 1  # no round at this step, all losses on
        step = min(step, model.T - 1)
        x_all = torch.cat([inst.x_hat.detach() for inst in insts])

        def teacher_fwd_bwd():
            x = x_all.clone().requires_grad_(True)
            model.tap(x).square().mean().backward()

        def one_step():
            model.step_units(insts, step, step)

        times, teacher = [], []
        for r in range(args.warmup + args.repeats):
            for fn, out in ((one_step, times), (teacher_fwd_bwd, teacher)):
                _sync(dev)
                start = time.perf_counter()
                fn()
                _sync(dev)
                if r >= args.warmup:
                    out.append(time.perf_counter() - start)
        step_s, teacher_s = statistics.median(times), statistics.median(teacher)
        flops = teacher_flops_per_patch(model, tuple(insts[0].x_hat.shape[1:]))
        patches = int(x_all.shape[0])
        return {
            'k':
            k,
            'patches':
            patches,
            'patch':
            list(insts[0].x_hat.shape[1:]),
            'step_ms':
            step_s * 1e3,
            'inst_iters_per_s':
            k / step_s,
            'teacher_share':
            teacher_s / step_s,
            'teacher_tflops':
            None if flops is None else 3 * flops * patches / teacher_s / 1e12,  # fwd + bwd = 3x fwd
            'peak_mib': (torch.cuda.max_memory_allocated() /
                         2**20 if dev.type == 'cuda' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            'memory':
            'CUDA peak allocated' if dev.type == 'cuda' else 'process peak RSS',
            'device':
            torch.cuda.get_device_name() if dev.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads',
            'teacher':
            type(model.net_t).__name__,
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', default='options/distill/idc_demo.yml')
    parser.add_argument('--ks', type=int, nargs='+', default=[1, 2, 4, 8, 16])
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--random-weights', action='store_true')
    parser.add_argument('--dataroot', default=None)
    parser.add_argument('--gt-size', type=int, default=None)
    parser.add_argument('--stride', type=int, default=None)
    parser.add_argument('--ratio', type=float, default=None)
    parser.add_argument('--paper-iters', type=int, nargs=2, default=None, metavar=('IMAGES', 'ITERS'))
    parser.add_argument('--json', default=None, help='also write the rows to this file')
    parser.add_argument('--one-k', type=int, default=None, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one_k is not None:
        try:
            row = measure(args, args.one_k)
        except torch.cuda.OutOfMemoryError as err:  # a K too large for the device is a figure too
            row = {'k': args.one_k, 'oom': True, 'error': str(err).splitlines()[0]}
        print(json.dumps(row))
        return
    rows = []
    for k in args.ks:  # one process per K: each peak memory is its own
        cmd = [sys.executable, __file__, *[a for a in sys.argv[1:]], '--one-k', str(k)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ)).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f'K={k} measured', file=sys.stderr)
    done = [r for r in rows if not r.get('oom')]
    if not done:
        sys.exit(f'every K ran out of memory: {rows}')
    base = rows[0]['inst_iters_per_s'] if rows[0]['k'] == 1 and not rows[0].get('oom') else None
    r0 = done[0]
    print(f'IDC batched step: {args.opt}, teacher {r0["teacher"]}, LR patch {tuple(r0["patch"])}, {r0["device"]}, '
          f'median of {args.repeats}')
    print(f'{"K":>4s} {"patches":>8s} {"ms/step":>9s} {"inst-it/s":>10s} {"x K=1":>6s} {"teacher":>8s} '
          f'{"TFLOP/s":>8s} {r0["memory"] + " MiB":>26s}' + ('  projected' if args.paper_iters else ''))
    for r in rows:
        if r.get('oom'):
            print(f'{r["k"]:4d}  out of memory ({r["error"][:80]})')
            continue
        line = (f'{r["k"]:4d} {r["patches"]:8d} {r["step_ms"]:9.1f} {r["inst_iters_per_s"]:10.2f} '
                f'{r["inst_iters_per_s"] / base if base else float("nan"):6.2f} {r["teacher_share"]:8.1%} '
                f'{r["teacher_tflops"] if r["teacher_tflops"] is not None else float("nan"):8.3f} '
                f'{r["peak_mib"]:26.0f}')
        if args.paper_iters:
            images, iters = args.paper_iters
            hours = images * iters / r['inst_iters_per_s'] / 3600
            line += f'  {hours:8.1f} h ({images} x {iters})'
        print(line)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()

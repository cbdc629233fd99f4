"""Benchmark one IDC step: where the time goes, and the memory of one instance.

Builds ``IDCModel`` from an option file (default: the CPU demo), starts one instance and times each part of a
step after the warm-up (all three losses active), split into teacher forward / backward, RLFF forward / backward,
NCFD (L_ins and L_group, forward + backward), the pair loss, the optimizer (zero_grad, Adam step, clamp) and the
grouping. The grouping runs in ``assign_steps`` of the T steps only: all its rounds (assignment + pair search of the
newly assigned patches, as ``IDCModel.idc_losses`` does them) are timed together and spread over the T steps.
Prints a table of median milliseconds and shares of the step, the median of real steps
(``IDCModel.optimize_parameters`` after the assignment, one graph and one backward) next to the table's total as a
check that the parts add up to the real work, and the memory of the instance. Ratios, not absolute times, are what
carries over between machines; on a shared machine, other processes make the times noisy (repeat the run).
Usage::

    python scripts/profile/benchmark_idc_step.py [-opt options/distill/idc_demo.yml] [--instance 0] [--repeats 20]

Run it from the repository (the default option file and the data paths inside it are relative to it).
"""
import argparse
import resource
import statistics
import tempfile
import time
import torch

import basicsr_distill  # noqa: F401

# isort: split
from benchmark_idc_batch import assignment_rounds as batch_rounds  # this folder (the script's sys.path[0])

from basicsr_distill.losses.idc_loss import multi_level_ncfd, pair_loss
from basicsr_distill.models.idc_model import IDCModel
from basicsr_distill.utils.options import build_model_from_options

OPTIM = 'optimizer (zero_grad, step, clamp)'
GROUPING = 'grouping (all assignment rounds)'


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def build_model(opt_path, out_dir):
    """``IDCModel`` of the option file, writing under ``out_dir``, on the GPU if there is one."""
    return build_model_from_options(
        opt_path, root=out_dir, distilled_root=f'{out_dir}/distilled', num_gpu='auto', model_cls=IDCModel)


def assignment_rounds(model, local_syn):
    """All ``assign_steps`` assignment rounds of the instance from no assignment, as ``IDCModel.idc_losses``."""
    model.inst.assigned = torch.full_like(model.inst.assigned, -1)
    batch_rounds(model, model.inst, local_syn)


def time_step(model):
    """One step with every part timed separately (all losses on, fully assigned); returns {part: seconds}."""
    inst, cfg, dev = model.inst, model.cfg, model.device
    w = cfg['weights']
    t = {}

    def clock(name, fn):
        _sync(dev)
        start = time.perf_counter()
        out = fn()
        _sync(dev)
        t[name] = t.get(name, 0.0) + time.perf_counter() - start
        return out

    clock(OPTIM, lambda: inst.optimizer.zero_grad(set_to_none=True))
    feat = clock('teacher forward', lambda: model.tap(inst.x_hat))
    feat_leaf = feat.detach().requires_grad_(True)
    local = clock('RLFF forward', lambda: inst.rlff(feat_leaf))
    local_leaf = local.detach().requires_grad_(True)
    clock(GROUPING, lambda: assignment_rounds(model, local_leaf))

    def ncfd_fb():
        l_ins, l_group = multi_level_ncfd(inst.bank, local_leaf, inst.assigned, cfg['ncfd']['num_freqs'],
                                          cfg['ncfd']['alpha'], inst.generator)
        (w['ins'] * l_ins + w['group'] * l_group).backward()

    clock('NCFD (L_ins + L_group, fwd + bwd)', ncfd_fb)
    clock('pair loss (fwd + bwd)', lambda:
          (w['pair'] * pair_loss(inst.local_real, local_leaf, inst.assigned, inst.pair_index)).backward())
    clock('RLFF backward', lambda: local.backward(local_leaf.grad))
    clock('teacher backward', lambda: feat.backward(feat_leaf.grad))
    clock(OPTIM, lambda: (inst.optimizer.step(), inst.x_hat.data.clamp_(0, 1)))
    return t


def time_real_step(model, current_iter):
    """Seconds of one ``IDCModel.optimize_parameters`` (the real step: one graph, one backward)."""
    _sync(model.device)
    start = time.perf_counter()
    model.optimize_parameters(current_iter)
    _sync(model.device)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', default='options/distill/idc_demo.yml')
    parser.add_argument('--instance', type=int, default=0)
    parser.add_argument('--repeats', type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(args.opt, tmp)
        rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if model.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model._start_instance(args.instance)
        setup_s = time.perf_counter() - start
        inst = model.inst
        step = model.cfg['warmup_iters'] + model.cfg['assign_iters'] + 1  # all losses on, fully assigned
        real_iter = args.instance * model.T + step if step < model.T else None  # step T would write the instance
        runs, real = [], []
        for _ in range(3 + args.repeats):  # 3 warm-up steps (allocator, kernels); real steps interleaved
            runs.append(time_step(model))
            if real_iter is not None:
                real.append(time_real_step(model, real_iter))
        runs, real = runs[3:], real[3:]
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        held = sum(x.numel() * x.element_size() for x in (inst.local_real, inst.x_hat, inst.labels_real))
        cuda_peak = torch.cuda.max_memory_allocated() if model.device.type == 'cuda' else None

    med = {p: statistics.median(r[p] for r in runs) for p in runs[0]}
    rounds = model.cfg['assign_steps']
    med['grouping, amortised'] = med.pop(GROUPING) / model.T  # all rounds of an instance, spread over its T steps
    parts = [
        'teacher forward', 'RLFF forward', 'NCFD (L_ins + L_group, fwd + bwd)', 'pair loss (fwd + bwd)',
        'RLFF backward', 'teacher backward', OPTIM, 'grouping, amortised'
    ]
    total = sum(med[p] for p in parts)
    print(f'IDC step benchmark: {args.opt}, instance {args.instance} ({inst.name}), device {model.device}, '
          f'{torch.get_num_threads()} threads, {args.repeats} repeats (median)')
    print(f'instance: N={inst.num_real} real LR patches {tuple(inst.x_hat.shape[1:])}, n={inst.n_syn} synthetic, '
          f'{inst.local_real.shape[0]} real / {inst.num_syn_patches} synthetic local patches, '
          f'{inst.num_groups} groups; instance setup (real features, RLFF, K-means) {setup_s * 1e3:.0f} ms')
    print(f'{"part":40s} {"ms":>9s} {"share":>7s}')
    for p in parts:
        print(f'{p:40s} {med[p] * 1e3:9.2f} {med[p] / total:7.1%}')
    teacher = med['teacher forward'] + med['teacher backward']
    print(f'{"step total":40s} {total * 1e3:9.2f}')
    print(f'(grouping: {med["grouping, amortised"] * model.T * 1e3:.2f} ms for the {rounds} assignment rounds of an '
          f'instance, spread over its {model.T} steps)')
    if real:
        print(f'check: real step (IDCModel.optimize_parameters, fully assigned) {statistics.median(real) * 1e3:.2f} '
              f'ms; table total without grouping {(total - med["grouping, amortised"]) * 1e3:.2f} ms')
    print(f'teacher forward + backward: {teacher / total:.1%} of the step; everything else: '
          f'{(total - teacher) / total:.1%} (target <= 25%)')
    print(f'memory: instance tensors kept for the whole instance {held / 2**20:.1f} MiB; process peak RSS '
          f'{rss0 / 1024:.0f} MiB at start, {rss_model / 1024:.0f} MiB with the model, {rss_peak / 1024:.0f} MiB after '
          f'the instance' + (f'; CUDA peak allocated {cuda_peak / 2**20:.1f} MiB' if cuda_peak else ''))


if __name__ == '__main__':
    main()

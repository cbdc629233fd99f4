"""Benchmark GSDD: peak memory and step time against IPC, chunked versus one full graph.

For each IPC (latents per class) a fresh process builds ``GSDDModel`` from an option file (default: the CPU demo,
Real-ESRGAN's compact generator), starts one class (GAN inversion switched off: it is not what is measured) and runs
``--steps`` optimisation steps (after one warm-up step). It reports the median step time and the growth of the
process's peak resident memory during the steps, once with ``distill.chunk_size`` from the option file and once with
chunk_size = IPC (one graph over all latents, the memory a naive implementation needs). Usage::

    python scripts/profile/benchmark_gsdd_memory.py [-opt options/distill/gsdd_demo.yml] [--ipc 2 4 8 16 32] \\
        [--steps 3] [--gt_size 128] [--width 32]

On CUDA the peak is ``torch.cuda.max_memory_allocated``; on the CPU it is the growth of ``ru_maxrss``.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def measure(opt_path, ipc, chunk, steps, gt_size=None, width=None):
    """Runs in a child process: one class, ``steps`` steps; returns a dict of measurements."""
    import torch

    import basicsr_distill  # noqa: F401
    from basicsr_distill.models.gsdd_model import GSDDModel
    from basicsr_distill.utils.options import build_model_from_options, read_option_file

    opt = read_option_file(opt_path)
    tmp = tempfile.mkdtemp()
    opt['distill'].update(ipc=ipc, chunk_size=chunk)
    if gt_size:
        opt['datasets']['train']['gt_size'] = gt_size
    if width:
        opt['distill']['extractor'] = dict(opt['distill']['extractor'], num_feat=width)
    opt['distill']['inversion'] = dict(opt['distill']['inversion'], iters=0)
    model = build_model_from_options(
        opt, root=tmp, distilled_root=f'{tmp}/distilled', num_gpu='auto', model_cls=GSDDModel)
    model._start_unit(0)
    cuda = model.device.type == 'cuda'
    times = []
    for step in range(steps + 1):
        if step == 1:  # after the warm-up step: measure from here
            base = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if cuda:
                torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model.optimize_parameters(step + 1)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak_mib, base_mib = torch.cuda.max_memory_allocated() / 2**20, base / 2**20
    else:
        peak_mib, base_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, base / 1024
    return {
        'ipc': ipc,
        'chunk': chunk,
        'step_s': statistics.median(times[1:]),
        'peak_mib': peak_mib,
        'base_mib': base_mib,
        'device': str(model.device),
        'hr': opt['datasets']['train']['gt_size'],
        'batch_real': opt['distill']['batch_real']
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', default=os.path.join(REPO, 'options', 'distill', 'gsdd_demo.yml'))
    parser.add_argument('--ipc', type=int, nargs='+', default=[2, 4, 8, 16, 32])
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--gt_size', type=int, help='override the HR crop size of the option file')
    parser.add_argument('--width', type=int, help='override distill.extractor.num_feat (ResNet18 width)')
    parser.add_argument('--child', nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.opt, args.child[0], args.child[1], args.steps, args.gt_size, args.width)))
        return
    import basicsr_distill  # noqa: F401
    from basicsr_distill.utils.options import read_option_file
    chunk = int(read_option_file(args.opt)['distill']['chunk_size'])
    rows = []
    for ipc in args.ipc:
        for mode, c in (('chunked', min(chunk, ipc)), ('full graph', ipc)):
            extra = [f'--{k}={v}' for k, v in (('gt_size', args.gt_size), ('width', args.width)) if v]
            cmd = [sys.executable, __file__, '-opt', args.opt, '--steps', str(args.steps), *extra, '--child']
            out = subprocess.run(cmd + [str(ipc), str(c)], capture_output=True, text=True, cwd=REPO)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            rows.append(dict(json.loads(out.stdout.strip().splitlines()[-1]), mode=mode))
    first = rows[0]
    print(f'GSDD step vs IPC: {args.opt}, device {first["device"]}, HR {first["hr"]}x{first["hr"]}, real batch '
          f'{first["batch_real"]}, ResNet18 width {args.width or "as the option file"}, median of {args.steps} steps;'
          ' peak = process peak (CPU: max RSS) after the steps')
    print(f'{"IPC":>5s} {"mode":>11s} {"chunk":>6s} {"step (s)":>9s} {"peak (MiB)":>11s} {"before steps":>13s}')
    for r in rows:
        print(f'{r["ipc"]:5d} {r["mode"]:>11s} {r["chunk"]:6d} {r["step_s"]:9.3f} {r["peak_mib"]:11.0f} '
              f'{r["base_mib"]:13.0f}')


if __name__ == '__main__':
    main()

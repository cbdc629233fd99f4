"""Benchmark Minimax-SR at the demo size: time per fine-tuning step, time per sampled image, peak memory.

Builds ``MinimaxDiffusionModel`` from an option file (default: the CPU demo with the tiny DiT / VAE) in a temporary
folder, runs stage 1 (selection, features, k-means and the patch store), times ``--steps`` fine-tuning steps (after
one warm-up step; each reads its batch from the store, flips it and encodes a fresh VAE posterior sample) and the
sampling of ``--images`` images of pseudo-class 0. Memory against the number of images:
``benchmark_minimax_stage1_memory.py``. Usage::

    python scripts/profile/benchmark_minimax.py [-opt options/distill/minimax_demo.yml] [--steps 10] [--images 2]
"""
import argparse
import os
import resource
import statistics
import tempfile
import time
import torch

import basicsr_distill  # noqa: F401

# isort: split
from basicsr_distill.models.minimax_diffusion_model import MinimaxDiffusionModel
from basicsr_distill.utils.options import build_model_from_options, read_option_file

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', default=os.path.join(REPO, 'options', 'distill', 'minimax_demo.yml'))
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--images', type=int, default=2)
    args = parser.parse_args()
    os.chdir(REPO)
    opt = read_option_file(args.opt)
    tmp = tempfile.mkdtemp()
    opt['distill']['finetune'] = dict(opt['distill']['finetune'], iters=args.steps + 1)
    opt['distill']['sample'] = dict(opt['distill']['sample'], images_per_class=args.images)
    opt['train']['total_iter'] = 10**6
    model = build_model_from_options(
        opt, root=tmp, distilled_root=f'{tmp}/distilled', num_gpu='auto', model_cls=MinimaxDiffusionModel)
    start = time.perf_counter()
    model.optimize_parameters(1)
    stage1_s = time.perf_counter() - start
    times = []
    for it in range(2, args.steps + 2):  # the last step also writes stage2_difffit.pth
        start = time.perf_counter()
        model.optimize_parameters(it)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    images, _ = model.sample_class(0)
    sample_s = (time.perf_counter() - start) / len(images)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    smp, ft = opt['distill']['sample'], opt['distill']['finetune']
    print(f'Minimax-SR benchmark: {args.opt}, device {model.device}, {torch.get_num_threads()} threads')
    print(f'stage 1 (selection + features + k-means + patch store): {stage1_s:.2f} s, '
          f'{len(model.selection["records"])} patches')
    print(f'fine-tuning step (batch {ft["batch_size"]}, latents {tuple(model.ft_latent_shape)}): median '
          f'{statistics.median(times[1:]) * 1e3:.0f} ms over {len(times) - 1} steps, the batch read and encoded '
          f'included (first step {times[0] * 1e3:.0f} ms)')
    print(f'sampling: {sample_s:.2f} s per image ({smp["steps"]} {smp["scheduler"]} steps, guidance '
          f'{smp["guidance_scale"]}, image {tuple(images.shape[1:])})')
    print(f'peak memory: {peak:.0f} MiB (process max RSS)' +
          (f', CUDA {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB' if torch.cuda.is_available() else ''))


if __name__ == '__main__':
    main()

"""Benchmark Minimax-SR's stage 1 (and the first fine-tuning steps) memory against the number of training images.

For each ``--images`` count, a fresh process builds ``MinimaxDiffusionModel`` (tiny DiT / VAE, weight-free features) on
that many synthetic 8-bit images (``--size`` square, textured, seeded), runs stage 1 (PSNR_bic selection, features,
k-means, the patch store ``stage1_patches.npy``) and ``--steps`` fine-tuning steps (each reads its batch from the
store, flips it and encodes a fresh posterior sample), and reports the growth of its peak memory (``ru_maxrss``)
over what it held once the model was built. ``--contrast`` also runs, in another fresh process, what the former code
did before stage 2: every selected patch read into one list (float32) and encoded once (posterior mode) into one
latent tensor. Usage::

    python scripts/profile/benchmark_minimax_stage1_memory.py [--images 16 64 256] [--size 512] [--gt_size 128] \
        [--steps 3] [--contrast]
"""
import argparse
import json
import numpy as np
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_images(folder, count, size):
    """``count`` textured 8-bit PNGs: smooth colour fields plus seeded noise of varied strength (varied PSNR_bic)."""
    import cv2
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng(i)
        coarse = rng.random((size // 32, size // 32, 3))
        img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        img = img + rng.random() * 0.3 * rng.standard_normal((size, size, 3))
        cv2.imwrite(os.path.join(folder, f'img{i:04d}.png'), np.clip(img * 255, 0, 255).astype(np.uint8))


def child(args):
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch

    import basicsr_distill  # noqa: F401

    # isort: split
    from basicsr_distill.archs.dit_difffit_arch import TINY_DIT_CONFIG
    from basicsr_distill.data.patch_selection import iter_patches
    from basicsr_distill.models.minimax_diffusion_model import MinimaxDiffusionModel
    from basicsr_distill.utils.options import build_model_from_options, read_option_file
    torch.set_num_threads(1)
    opt = read_option_file(os.path.join(REPO, 'options', 'distill', 'minimax_demo.yml'))
    work = tempfile.mkdtemp()
    meta = os.path.join(work, 'meta.txt')
    with open(meta, 'w') as f:
        f.writelines(f'img{i:04d}.png\n' for i in range(args.child))
    opt['datasets']['train'].update(
        dataroot_gt=args.folder, meta_info_file=meta, gt_size=args.gt_size, stride=args.gt_size)
    k = opt['distill']['stage1']['k']
    opt['distill']['dit'] = {'config': dict(TINY_DIT_CONFIG, sample_size=args.gt_size // 8, num_embeds_ada_norm=k)}
    opt['distill']['finetune'] = dict(opt['distill']['finetune'], iters=args.steps + 1)
    opt['train']['total_iter'] = 10**6
    model = build_model_from_options(
        opt, root=work, distilled_root=f'{work}/distilled', num_gpu='auto', model_cls=MinimaxDiffusionModel)
    built = peak_mib()
    start = time.perf_counter()
    if args.former:  # the former code: every selected patch in one list, then all latents at once
        from basicsr_distill.archs.dit_difffit_arch import vae_encode
        sel = model.stage1()
        patches = list(iter_patches(sel['records']))
        with torch.no_grad():
            latents = torch.cat([
                vae_encode(model.vae, torch.from_numpy(np.stack(patches[i:i + 16])).permute(0, 3, 1, 2), sample=False)
                for i in range(0, len(patches), 16)
            ])
        out = {'selected': len(patches), 'latent_mib': latents.numel() * 4 / 2**20}
        stage1_peak = peak_mib()
    else:
        model.optimize_parameters(1)
        stage1_peak = peak_mib()
        for it in range(2, args.steps + 2):
            model.optimize_parameters(it)
        out = {'selected': len(model.selection['records']), 'store_mib': os.path.getsize(model.store_path) / 2**20}
    out.update(
        images=args.child,
        seconds=round(time.perf_counter() - start, 2),
        built_mib=round(built),
        stage1_growth_mib=round(stage1_peak - built, 1),
        total_growth_mib=round(peak_mib() - built, 1),
        patch_list_mib=round(out['selected'] * args.gt_size**2 * 3 * 4 / 2**20, 1))
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, nargs='+', default=[16, 64, 256])
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--gt_size', type=int, default=128)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--contrast', action='store_true', help='also measure the former hold-everything code')
    parser.add_argument('--child', type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument('--former', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--folder', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(REPO)
    if args.child is not None:
        child(args)
        return
    folder = os.path.join(tempfile.mkdtemp(), 'hr')
    make_images(folder, max(args.images), args.size)
    rows = []
    for count in args.images:
        for former in ([False, True] if args.contrast else [False]):
            cmd = [
                sys.executable, __file__, '--child',
                str(count), '--folder', folder, '--size',
                str(args.size), '--gt_size',
                str(args.gt_size), '--steps',
                str(args.steps)
            ] + (['--former'] if former else [])
            env = dict(os.environ, OMP_NUM_THREADS='1')
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row['code'] = 'former (all patches + latents in memory)' if former else 'store (streamed)'
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f'\nMinimax-SR stage-1 memory: {args.size}x{args.size} images, {args.gt_size}x{args.gt_size} patches, '
          f'{args.steps} fine-tuning steps; growth of peak RSS over the built model (MiB)')
    print('| images | selected patches | code | stage 1 growth | after the steps | selected patches as float32 |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        print(f'| {r["images"]} | {r["selected"]} | {r["code"]} | {r["stage1_growth_mib"]} | '
              f'{r["total_growth_mib"]} | {r["patch_list_mib"]} |')


if __name__ == '__main__':
    main()

#!/usr/bin/env python
"""Evaluate a pretrained SR network on an image folder (PSNR / SSIM as in BasicSR).

Example::

    python scripts/eval_sr.py --arch IMDN --arch-opt block_type=imdb --weights /work/shared/weights/IMDN_x4.pth \\
        --hr /work/shared/data/val/Set5/HR --lr /work/shared/data/val/Set5/LR_bicubic/X4 --scale 4
"""
import argparse
import inspect

import basicsr_distill  # noqa: F401  (compat fixes and arch registration; must precede basicsr / torchvision)

from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402

from basicsr_distill.utils.checkpoint import load_pretrained  # noqa: E402
from basicsr_distill.utils.sr_eval import evaluate_sr  # noqa: E402
from basicsr_distill.utils.sr_metrics import add_arch_arguments, parse_arch_opts  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_arch_arguments(parser, required=True)
    parser.add_argument('--weights', required=True, help='checkpoint file')
    parser.add_argument('--param-key', default='auto', help='entry of the checkpoint holding the state dict')
    parser.add_argument('--hr', required=True, help='folder of HR images')
    parser.add_argument('--lr', default=None, help='folder of LR images (default: bicubic-downsample the HR images)')
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--crop-border', type=int, default=None, help='border shaved before measuring (default: scale)')
    parser.add_argument('--rgb', action='store_true', help='measure on RGB instead of the Y channel')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)

    arch_opts = parse_arch_opts(args.arch_opt)
    arch_cls = ARCH_REGISTRY.get(args.arch)
    if 'upscale' in inspect.signature(arch_cls).parameters:  # BasicSR's name for the factor
        arch_opts.setdefault('upscale', args.scale)
    net = arch_cls(**arch_opts)
    load_pretrained(net, args.weights, param_key=args.param_key)
    result = evaluate_sr(
        net,
        args.hr,
        args.lr,
        scale=args.scale,
        device=args.device,
        crop_border=args.crop_border,
        test_y_channel=not args.rgb)

    channel = 'RGB' if args.rgb else 'Y'
    width = max(len(name) for name in result['per_image'])
    for name, values in result['per_image'].items():
        print(f'{name:<{width}}  PSNR {values["psnr"]:.4f} dB  SSIM {values["ssim"]:.4f}')
    print(f'{"mean":<{width}}  PSNR {result["psnr"]:.4f} dB  SSIM {result["ssim"]:.4f}  '
          f'({channel}, {len(result["per_image"])} images, x{args.scale})')
    return result


if __name__ == '__main__':
    main()

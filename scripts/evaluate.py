#!/usr/bin/env python
"""Evaluate a trained SR network on test folders: PSNR / SSIM / NIQE / LPIPS, training-set size and wall time.

The network comes from a BasicSR option file (its ``network_g`` and ``scale``; the weights from ``--weights`` or
its ``path.pretrain_network_g``) or from ``--arch`` / ``--arch-opt`` / ``--weights``.
Test sets are ``--test_set NAME=HR_DIR[:LR_DIR]`` (repeatable) or one ``--hr HR_DIR [--lr LR_DIR]`` (named after the
HR folder); without an LR folder the LR images are made from the HR images (MATLAB bicubic).
Metrics as in BasicSR (Y channel, border = scale, 8-bit output); see ``basicsr_distill/utils/sr_metrics.py``.
LPIPS is optional: without ``pip install lpips==0.1.4`` and torchvision's ``alexnet-owt-7be5be79.pth`` in
``$TORCH_HOME/hub/checkpoints/`` it is reported unavailable (null in the JSON). Examples::

    python scripts/evaluate.py -opt options/train/EDSR/train_EDSR_x4_distilled_demo.yml \\
        --weights experiments/EDSR_demo_x4_f32b4_idc/models/net_g_latest.pth \\
        --test_set Set5=datasets/demo/Set5/HR:datasets/demo/Set5/LR_bicubic/X4 \\
        --train_set datasets/distilled/idc_demo \\
        --train_log experiments/EDSR_demo_x4_f32b4_idc/train_EDSR_demo_x4_f32b4_idc_<time>.log \\
        --json results/eval_idc.json
    python scripts/evaluate.py --arch IMDN --arch-opt block_type=imdb_ntire22 --weights weights/imdn_baseline.pth \\
        --test_set Set5=datasets/demo/Set5/HR --metrics psnr ssim niqe
    python scripts/evaluate.py --arch IMDN --arch-opt block_type=imdb --weights ../shared/weights/IMDN_x4.pth \\
        --hr datasets/demo/Set5/HR --lr datasets/demo/Set5/LR_bicubic/X4 --metrics psnr ssim --per-image

Option files are code (BasicSR's YAML loader runs their tags): use trusted files only.
"""
import argparse
import json
import os
import os.path as osp

import basicsr_distill  # noqa: F401  (compat fixes and arch registration; must precede basicsr / torchvision)

# isort: split

from basicsr_distill.distilled_set import dataset_size
from basicsr_distill.utils import options
from basicsr_distill.utils.checkpoint import load_network
from basicsr_distill.utils.sr_metrics import (METRICS, add_arch_arguments, check_test_sets, evaluate_network,
                                              parse_arch_opts, parse_test_set, parse_train_time)


def read_option_file(path):
    """A BasicSR option file (:func:`basicsr_distill.utils.options.read_option_file`) with a ``network_g`` dict.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it has no ``network_g`` dict.
    """
    try:
        opt = options.read_option_file(path)
    except ValueError:  # not a mapping: it has no network_g either
        opt = None
    if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict):
        raise ValueError(f'Option file "{path}" has no network_g section.')
    return opt


def hr_lr_test_set(hr_dir, lr_dir=None):
    """The test set of ``--hr HR_DIR [--lr LR_DIR]``: ``(name, hr_dir, lr_dir)``, named after the HR folder."""
    return osp.basename(osp.normpath(hr_dir)) or hr_dir, hr_dir, lr_dir


def network_from_args(args, parser):
    """``(net, description)`` from the command line; ``args.scale`` is filled from the option file if unset."""
    if bool(args.opt) == bool(args.arch):
        parser.error('give either -opt OPTION_FILE or --arch ARCH (with --weights)')
    param_key = args.param_key
    if args.opt:
        if args.arch_opt:
            parser.error('--arch-opt goes with --arch; with -opt, edit network_g in the option file')
        opt = read_option_file(args.opt)
        network_opt = dict(opt['network_g'])
        path_opt = opt.get('path') or {}
        weights = args.weights or path_opt.get('pretrain_network_g')
        if param_key is None:
            param_key = path_opt.get('param_key_g', 'auto')
        if args.scale is None:
            args.scale = int(opt.get('scale', 4))
        source = args.opt
    else:
        network_opt = {'type': args.arch, **parse_arch_opts(args.arch_opt)}
        weights = args.weights
        source = '--arch'
    if args.scale is None:
        args.scale = 4
    if not weights:
        parser.error('no weights: give --weights (or path.pretrain_network_g in the option file)')
    net = load_network(network_opt, weights, scale=args.scale, param_key=param_key or 'auto')
    return net, {'network_g': network_opt, 'weights': weights, 'param_key': param_key or 'auto', 'source': source}


def format_value(value, digits=4):
    return 'n/a' if value is None else f'{value:.{digits}f}'


def format_report(report, per_image=False):
    """The stdout table of a report (as written to ``--json``)."""
    ev = report['evaluation']
    metrics = ev['metrics']
    titles = {'psnr': 'PSNR (dB)', 'ssim': 'SSIM', 'niqe': 'NIQE', 'lpips': 'LPIPS'}
    rows = []
    for name, res in ev['test_sets'].items():
        rows.append([name, str(res['num_images'])] + [format_value(res[m]) for m in metrics])
        if per_image:
            rows += [[f'  {img}', ''] + [format_value(vals[m]) for m in metrics]
                     for img, vals in res['per_image'].items()]
    header = ['test set', 'images'] + [titles[m] for m in metrics]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    net = report['network']
    lines = [
        f'network: {net["network_g"]["type"]} ({net["weights"]}), x{ev["scale"]}, border {ev["crop_border"]}, '
        f'PSNR / SSIM on {"Y" if ev["test_y_channel"] else "RGB"}'
    ]
    lines += ['  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + rows]
    lines += list(ev['unavailable'].values())
    if report.get('train_set'):
        size = report['train_set']
        parts = ''
        if size['parts'] is not None:
            parts = ': ' + ', '.join(f'{k} {v:,}' for k, v in size['parts'].items())
        lines.append(f'training set: {size["path"]}: {size["bytes"]:,} bytes ({size["bytes"] / 2**20:.2f} MiB, '
                     f'{size["files"]} files{parts})')
    if report.get('train_log'):
        log = report['train_log']
        lines.append(f'training wall time: {log["text"]} ({log["seconds"]} s) from {log["path"]}')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', '--opt', default=None, help='BasicSR option file: network_g, scale, pretrain path')
    add_arch_arguments(parser, required=False)
    parser.add_argument('--weights', default=None, help='checkpoint file (default with -opt: path.pretrain_network_g)')
    parser.add_argument(
        '--param-key',
        '--param_key',
        default=None,
        help='entry of the checkpoint holding the state dict (default: path.param_key_g with -opt, else auto: '
        'params_ema, params, the whole dict)')
    parser.add_argument(
        '--test_set',
        '--test-set',
        action='append',
        default=[],
        metavar='NAME=HR_DIR[:LR_DIR]',
        help='test folder (repeatable); without LR_DIR the LR images are made by bicubic downsampling')
    parser.add_argument('--hr', default=None, help='one more test folder of HR images, named after the folder')
    parser.add_argument('--lr', default=None, help='with --hr: its LR images (default: made by bicubic downsampling)')
    parser.add_argument('--scale', type=int, default=None, help='upsampling factor (default: the option file\'s, or 4)')
    parser.add_argument('--crop-border', '--crop_border', type=int, default=None, help='border shaved (default: scale)')
    parser.add_argument('--rgb', action='store_true', help='PSNR / SSIM on RGB instead of the Y channel')
    parser.add_argument('--metrics', nargs='+', default=list(METRICS), choices=METRICS, help='metrics to report')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--train_set', '--train-set', default=None, help='training set folder: report its size')
    parser.add_argument('--train_log', '--train-log', default=None, help='BasicSR train log: report the wall time')
    parser.add_argument('--json', default=None, metavar='OUT', help='write all numbers to this JSON file')
    parser.add_argument('--per-image', '--per_image', action='store_true', help='print per-image values too')
    args = parser.parse_args(argv)

    if not args.test_set and not args.hr:
        parser.error('give at least one test set: --test_set NAME=HR_DIR[:LR_DIR] or --hr HR_DIR [--lr LR_DIR]')
    if args.lr and not args.hr:
        parser.error('--lr goes with --hr')
    test_sets = []
    for spec in args.test_set:
        try:
            test_sets.append(parse_test_set(spec))
        except ValueError as err:
            parser.error(str(err))
    if args.hr:
        test_sets.append(hr_lr_test_set(args.hr, args.lr))
    # cheap checks first: a missing folder or a bad log fails before the network is built
    test_sets = check_test_sets(test_sets)
    train_set = dataset_size(args.train_set) if args.train_set else None
    train_log = parse_train_time(args.train_log) if args.train_log else None
    net, network = network_from_args(args, parser)
    evaluation = evaluate_network(
        net,
        test_sets,
        scale=args.scale,
        metrics=args.metrics,
        device=args.device,
        crop_border=args.crop_border,
        test_y_channel=not args.rgb)
    report = {'network': network, 'evaluation': evaluation, 'train_set': train_set, 'train_log': train_log}
    print(format_report(report, per_image=args.per_image))
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(report, f, indent=2)
            f.write('\n')
        print(f'written: {args.json}')
    return report


if __name__ == '__main__':
    main()

"""Write a random subset of real training patches in the distilled-set format.

The patch pool is the one a distillation option file defines (its ``datasets.train``: HR folder, scale, gt_size,
stride), so the subset is directly comparable with the distilled set. Example (the README demo)::

    python scripts/select_subset.py -opt options/distill/idc_demo.yml --num_pairs 60 \
        --out datasets/distilled/random_demo --seed 0
"""
import argparse
import json
import os.path as osp
import sys

import yaml

import basicsr_distill  # noqa: F401
from basicsr.utils.options import ordered_yaml
from basicsr_distill.data.sr_instance_dataset import SRInstanceDataset
from basicsr_distill.distilled_set import DistilledSetWriter, read_manifest
from basicsr_distill.selection.random_selection import select_random


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', required=True, help='a distillation option file (its datasets.train is used)')
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument('--num_pairs', type=int, help='number of pairs to keep')
    size.add_argument('--ratio', type=float, help='fraction r of all patches to keep')
    size.add_argument('--like', help='a distilled set whose pair count to match')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)

    with open(args.opt) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    dataset_opt = dict(opt['datasets']['train'], scale=opt['scale'], phase='train')
    source = SRInstanceDataset(dataset_opt)
    instances = [source.load_instance(i) for i in range(source.num_instances)]
    pool = [(i, j) for i, inst in enumerate(instances) for j in range(inst['lq'].shape[0])]
    if args.like:
        num = read_manifest(args.like)['num_pairs']
    elif args.ratio is not None:
        num = max(1, round(args.ratio * len(pool)))
    else:
        num = args.num_pairs
    chosen = [pool[k] for k in select_random(len(pool), num, args.seed)]

    writer = DistilledSetWriter(
        args.out, method='random', scale=int(opt['scale']),
        source={'folder': dataset_opt['dataroot_gt'], 'num_images': source.num_instances,
                'num_patches': len(pool), 'gt_size': source.gt_size, 'stride': source.stride},
        size_control={'num_pairs': num, 'r': num / len(pool)},
        options={'selection': 'random', 'seed': args.seed, 'source_options': args.opt, 'num_pairs': num})
    for i, inst in enumerate(instances):
        pairs = [{
            'name': f'{inst["name"]}_rand{j:04d}',
            'lq': inst['lq'][j].permute(1, 2, 0).numpy(),
            'gt': inst['gt'][j].permute(1, 2, 0).numpy(),
            'info': {'instance': inst['name'], 'source_image': inst['path'], 'hr_yx': list(inst['coords'][j])},
        } for (ii, j) in chosen if ii == i]
        writer.write_unit(inst['name'], pairs)
    writer.finalize()
    print(json.dumps({'out': osp.abspath(args.out), 'num_pairs': num, 'pool': len(pool)}))


if __name__ == '__main__':
    sys.exit(main())

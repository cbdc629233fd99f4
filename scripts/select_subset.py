"""Write a subset of real training patches, chosen by a coreset / pruning baseline, in the distilled-set format.

The patch pool is the one a distillation option file defines (its ``datasets.train``: HR folder, scale, gt_size,
stride), so the subset is directly comparable with the distilled set. Methods (``--method``,
:mod:`basicsr_distill.selection`):

* ``random`` (default): uniform, seeded;
* ``herding``, ``kcenter``: on per-patch features of the LR patches, ``--features teacher`` (the option file's
  ``network_t`` loaded from ``path.pretrain_network_t``, features at ``distill.feature_layer`` or
  ``--feature_layer``, global-average-pooled) or ``--features random`` (a seeded random DM ResNet18);
* ``dcsr``: Sobel complexity above the median, k-means (``--num_clusters``) on texture descriptors, even sampling;
* ``psnr_bic``: the lowest PSNR_bic (bicubic round trip at the option file's scale) first.

The pool is read one image at a time (per-patch features / scores are kept, not the patches), and the images with
chosen patches are read again to write them. Example (the README demo)::

    python scripts/select_subset.py -opt options/distill/idc_demo.yml --num_pairs 60 \
        --out datasets/distilled/random_demo --seed 0
    python scripts/select_subset.py -opt options/distill/idc_demo.yml --like datasets/distilled/idc_demo \
        --method kcenter --features teacher --out datasets/distilled/kcenter_demo
"""
import argparse
import copy
import json
import os.path as osp
import sys
import time

import numpy as np
import torch
import yaml

import basicsr_distill  # noqa: F401
from basicsr.archs import build_network
from basicsr.utils.options import ordered_yaml
from basicsr_distill.data.sr_instance_dataset import SRInstanceDataset
from basicsr_distill.distilled_set import DistilledSetWriter, read_manifest
from basicsr_distill.ops.psnr_bic import psnr_bic_batch
from basicsr_distill.selection.common import check_num_select
from basicsr_distill.selection.dcsr import select_dcsr_from_descriptors, texture_complexity, texture_features
from basicsr_distill.selection.features import FEATURE_KINDS, patch_features, random_feature_network
from basicsr_distill.selection.herding import select_herding
from basicsr_distill.selection.kcenter import KCENTER_STARTS, select_kcenter
from basicsr_distill.selection.psnr_bic_selection import select_lowest_psnr_bic
from basicsr_distill.selection.random_selection import select_random
from basicsr_distill.utils.checkpoint import load_pretrained

METHODS = ('random', 'herding', 'kcenter', 'dcsr', 'psnr_bic')
FEATURE_METHODS = ('herding', 'kcenter')
RANDOM_FEATURE_WIDTH = 64


def load_teacher(opt, device):
    """The option file's ``network_t`` with ``path.pretrain_network_t`` (strict, as the distillation models load it).

    Raises:
        ValueError: if ``network_t`` or ``path.pretrain_network_t`` is missing.
    """
    path = (opt.get('path') or {}).get('pretrain_network_t')
    if not opt.get('network_t') or not path:
        raise ValueError('--features teacher needs network_t and path.pretrain_network_t in the option file; use '
                         '--features random otherwise')
    net = build_network(copy.deepcopy(dict(opt['network_t'])))
    load_pretrained(net, path, param_key=opt['path'].get('param_key_t', 'auto'),
                    strict=opt['path'].get('strict_load_t', True))
    net = net.to(device).eval()
    net.requires_grad_(False)
    return net, path


def build_feature_net(args, opt, lq_size, device):
    """(net, layer, description) of the embedding used by herding / k-center."""
    if args.features == 'teacher':
        net, path = load_teacher(opt, device)
        layer = args.feature_layer or (opt.get('distill') or {}).get('feature_layer')
        return net, layer, {'network_t': opt['network_t'], 'pretrain_network_t': path, 'feature_layer': layer}
    net = random_feature_network((lq_size, lq_size), torch.Generator().manual_seed(args.seed),
                                 num_feat=RANDOM_FEATURE_WIDTH).to(device)
    return net, None, {'arch': 'DMResNet18', 'norm': net.norm, 'num_feat': net.num_feat, 'pool_size': net.pool_size,
                       'weights_seed': args.seed}


def describe_pool(source, args, opt, device):
    """One pass over the images: patch counts and what the method needs of every patch.

    Returns:
        tuple: (counts per image, per-patch descriptors or None, feature-net description or None).
    """
    net = layer = described = None
    if args.method in FEATURE_METHODS:
        net, layer, described = build_feature_net(args, opt, source.gt_size // source.scale, device)
    counts, parts = [], []
    for i in range(source.num_instances):
        inst = source.load_instance(i)
        counts.append(inst['lq'].shape[0])
        if not counts[-1] or args.method == 'random':
            continue
        if args.method in FEATURE_METHODS:
            parts.append(patch_features(inst['lq'], args.features, net=net, layer=layer))
        else:
            hr = inst['gt'].permute(0, 2, 3, 1).numpy()
            if args.method == 'dcsr':
                parts.append((texture_complexity(hr), texture_features(hr)))
            else:
                parts.append(psnr_bic_batch(hr, source.scale))
    if args.method == 'random' or not parts:
        return counts, None, described
    if args.method == 'dcsr':
        return counts, (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])), described
    return counts, np.concatenate(parts), described


def select(args, descriptors, num_pool, num):
    """Indices into the pool (in the method's order) and an optional per-index score for the pair info."""
    if args.method == 'random':
        return select_random(num_pool, num, args.seed), None
    if args.method == 'herding':
        return select_herding(descriptors, num), None
    if args.method == 'kcenter':
        return select_kcenter(descriptors, num, start=args.kcenter_start, seed=args.seed), None
    if args.method == 'dcsr':
        complexity, feats = descriptors
        return select_dcsr_from_descriptors(complexity, feats, num, args.num_clusters, args.seed), \
            ('texture_complexity', complexity)
    return select_lowest_psnr_bic(descriptors, num), ('psnr_bic', descriptors)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', required=True, help='a distillation option file (its datasets.train is used)')
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument('--num_pairs', type=int, help='number of pairs to keep')
    size.add_argument('--ratio', type=float, help='fraction r of all patches to keep')
    size.add_argument('--like', help='a distilled set whose pair count to match')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--seed', type=int, default=0,
                        help='random: the draw; kcenter --kcenter_start random: the start; dcsr: k-means and '
                        'sampling; --features random: the network weights')
    parser.add_argument('--method', choices=METHODS, default='random', help='selection rule (default: random)')
    parser.add_argument('--features', choices=FEATURE_KINDS, default='teacher',
                        help='herding / kcenter: teacher features (network_t) or a random DM ResNet18')
    parser.add_argument('--feature_layer', default=None,
                        help='teacher layer (default: distill.feature_layer of the option file, else forward_features)')
    parser.add_argument('--kcenter_start', choices=KCENTER_STARTS, default='mean',
                        help='kcenter: start at the patch closest to the mean, or a seeded random one')
    parser.add_argument('--num_clusters', type=int, default=15, help='dcsr: k-means clusters (the paper: 15)')
    args = parser.parse_args(argv)
    start = time.monotonic()  # the set's wall_time_s covers scoring the pool, selecting and writing

    with open(args.opt) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    dataset_opt = dict(opt['datasets']['train'], scale=opt['scale'], phase='train')
    source = SRInstanceDataset(dataset_opt)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    counts, descriptors, feature_net = describe_pool(source, args, opt, device)
    pool = [(i, j) for i, count in enumerate(counts) for j in range(count)]
    if args.like:
        num = read_manifest(args.like)['num_pairs']
    elif args.ratio is not None:
        num = max(1, round(args.ratio * len(pool)))
    else:
        num = args.num_pairs
    num = check_num_select(num, len(pool))
    chosen, score = select(args, descriptors, len(pool), num)
    rank = {pool[k]: r for r, k in enumerate(chosen)}
    picked = [[] for _ in counts]
    for i, j in sorted(rank):
        picked[i].append(j)

    options = {'selection': args.method, 'seed': args.seed, 'source_options': args.opt, 'num_pairs': num}
    if args.method in FEATURE_METHODS:
        options.update(features=args.features, feature_net=feature_net)
    if args.method == 'kcenter':
        options['kcenter_start'] = args.kcenter_start
    elif args.method == 'dcsr':
        options['num_clusters'] = args.num_clusters
    elif args.method == 'psnr_bic':
        options['psnr_bic_scale'] = source.scale
    writer = DistilledSetWriter(
        args.out, method=args.method, scale=int(opt['scale']),
        source={'folder': dataset_opt['dataroot_gt'], 'num_images': source.num_instances,
                'num_patches': len(pool), 'gt_size': source.gt_size, 'stride': source.stride},
        size_control={'num_pairs': num, 'r': num / len(pool)},
        options=options, start_time=start)
    tag = 'rand' if args.method == 'random' else args.method
    offsets = np.cumsum([0] + counts)
    for i in range(source.num_instances):
        inst = source.load_instance(i) if picked[i] else {'name': source.names[i]}
        pairs = []
        for j in picked[i]:
            info = {'instance': inst['name'], 'source_image': inst['path'], 'hr_yx': list(inst['coords'][j])}
            if args.method != 'random':  # random keeps its former entries
                info['selection_rank'] = rank[(i, j)]
            if score is not None:
                info[score[0]] = float(score[1][offsets[i] + j])
            pairs.append({'name': f'{inst["name"]}_{tag}{j:04d}', 'lq': inst['lq'][j].permute(1, 2, 0).numpy(),
                          'gt': inst['gt'][j].permute(1, 2, 0).numpy(), 'info': info})
        writer.write_unit(inst['name'], pairs)
    writer.finalize()
    print(json.dumps({'out': osp.abspath(args.out), 'method': args.method, 'num_pairs': num, 'pool': len(pool)}))


if __name__ == '__main__':
    sys.exit(main())

"""Write a subset of real training patches, chosen by a coreset / pruning baseline, in the distilled-set format.

The command line of :func:`basicsr_distill.selection.pool.select_subset` (the pool, the methods and the output are
described there). The patch pool is the one a distillation option file defines (its ``datasets.train``: HR folder,
scale, gt_size, stride), so the subset is directly comparable with the distilled set. Methods (``--method``):

* ``random`` (default): uniform, seeded;
* ``herding``, ``kcenter``: on per-patch features of the LR patches, ``--features teacher`` (the option file's
  ``network_t`` loaded from ``path.pretrain_network_t``, features at ``distill.feature_layer`` or
  ``--feature_layer``, global-average-pooled) or ``--features random`` (a seeded random DM ResNet18);
* ``dcsr``: Sobel complexity above the median, k-means (``--num_clusters``) on texture descriptors, even sampling;
* ``psnr_bic``: Threshold Crop Select (the Minimax-SR paper's baseline): the patches strictly below the median PSNR_bic
  (bicubic round trip at the option file's scale), then a uniform draw among them, seeded by ``--seed``; a budget
  larger than the below-median patches is refused;
* ``psnr_bic_lowest``: the lowest PSNR_bic first (past the median, with a warning, when the budget is larger).

Controls that isolate what a distillation method adds (the HR side comes from a network of the option file):

* ``random_teacher_hr``: the LR patches of ``random`` (same seed, names and count), HR = the teacher ``network_t``
  applied to them, as IDC makes its HR;
* ``idc_init``: IDC's x_hat before any step, through the same teacher (``--like`` an IDC set: that run's options);
* ``random_generator_hr`` (GSDD's control): the patches of ``random``, HR = GSDD's generator ``network_g`` applied to
  their real LR, LR = the bicubic LR of that HR, as GSDD writes its pairs (``--like`` a GSDD set: its generator).

Prints ``{"out", "method", "num_pairs", "pool"}`` as JSON. Example (the README demo)::

    python scripts/select_subset.py -opt options/distill/idc_demo.yml --num_pairs 60 \
        --out datasets/distilled/random_demo --seed 0
    python scripts/select_subset.py -opt options/distill/idc_demo.yml --like datasets/distilled/idc_demo \
        --method kcenter --features teacher --out datasets/distilled/kcenter_demo
"""
import argparse
import json
import sys

import basicsr_distill  # noqa: F401

# isort: split
from basicsr_distill.selection.features import FEATURE_KINDS
from basicsr_distill.selection.kcenter import KCENTER_STARTS
from basicsr_distill.selection.pool import METHODS, select_subset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', required=True, help='a distillation option file (its datasets.train is used)')
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument('--num_pairs', type=int, help='number of pairs to keep')
    size.add_argument('--ratio', type=float, help='fraction r of all patches to keep')
    size.add_argument('--like', help='a distilled set whose pair count to match')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument(
        '--seed',
        type=int,
        default=0,
        help='random: the draw; kcenter --kcenter_start random: the start; dcsr: k-means and '
        'sampling; psnr_bic: the draw among the patches below the median PSNR_bic; --features random: the network '
        'weights')
    parser.add_argument('--method', choices=METHODS, default='random', help='selection rule (default: random)')
    parser.add_argument(
        '--features',
        choices=FEATURE_KINDS,
        default='teacher',
        help='herding / kcenter: teacher features (network_t) or a random DM ResNet18')
    parser.add_argument(
        '--feature_layer',
        default=None,
        help='teacher layer (default: distill.feature_layer of the option file, else forward_features)')
    parser.add_argument(
        '--kcenter_start',
        choices=KCENTER_STARTS,
        default='mean',
        help='kcenter: start at the patch closest to the mean, or a seeded random one')
    parser.add_argument('--num_clusters', type=int, default=15, help='dcsr: k-means clusters (the paper: 15)')
    args = parser.parse_args(argv)
    result = select_subset(
        args.opt,
        args.out,
        method=args.method,
        num_pairs=args.num_pairs,
        ratio=args.ratio,
        like=args.like,
        seed=args.seed,
        features=args.features,
        feature_layer=args.feature_layer,
        kcenter_start=args.kcenter_start,
        num_clusters=args.num_clusters)
    print(json.dumps(result))


if __name__ == '__main__':
    sys.exit(main())

#!/usr/bin/env python
"""How far and at which frequencies IDC moved its LR patches: a distilled set against the set of its starts.

    python scripts/xhat_spectrum.py --set results/benchmark/cpu_291_converged/sets/idc_psnr_bic_r0.01 \\
        --start results/benchmark/cpu_291_converged/sets/idc_psnr_bic_init_r0.01

``--start`` is an ``idc_init`` set of the same run (``select_subset.py --method idc_init --like <set>``): the same
units, one pair per synthetic patch in the same order. Prints, over all pairs, the mean |x_hat - start| (LR [0, 1]
units), the share of the change's energy above half the Nyquist frequency (:func:`high_band_share`; white noise:
0.75) and, for reference, the same share of the starts themselves (mean removed).
"""
import argparse
import numpy as np
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..')))

from basicsr_distill.distilled_set import read_manifest  # noqa: E402
from basicsr_distill.distilled_set.layout import pair_paths  # noqa: E402
from basicsr_distill.utils.spectrum import high_band_share  # noqa: E402


def _by_unit(root):
    pairs = {}
    for pair in read_manifest(root)['pairs']:
        pairs.setdefault(pair['unit'], []).append(np.load(pair_paths(root, pair['name'])['lr_float']))
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--set', required=True, help='distilled set (IDC)')
    parser.add_argument('--start', required=True, help='its idc_init set')
    parser.add_argument('--cutoff', type=float, default=0.25, help='band edge, cycles per pixel (default 0.25)')
    args = parser.parse_args(argv)
    moved, start = _by_unit(args.set), _by_unit(args.start)
    if sorted(moved) != sorted(start) or any(len(moved[u]) != len(start[u]) for u in moved):
        raise ValueError(f'{args.set} and {args.start} do not hold the same units and pair counts: is --start the '
                         f'idc_init set of this run (select_subset.py --method idc_init --like {args.set})?')
    deltas = [x - x0 for u in moved for x, x0 in zip(moved[u], start[u])]
    stacked = np.concatenate([d[None] for d in deltas])
    mad = float(np.abs(stacked).mean())
    share = float(np.mean([high_band_share(d, args.cutoff) for d in deltas]))
    natural = float(
        np.mean([high_band_share(x0 - x0.mean(axis=(0, 1)), args.cutoff) for u in start for x0 in start[u]]))
    print(f'{len(deltas)} pairs: mean |x_hat - start| {mad:.4f}; share of the change above {args.cutoff} cycles/pixel '
          f'{share:.3f} (white noise {1 - (2 * args.cutoff)**2:.3f}); the starts themselves {natural:.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Convert a distilled set's hr/ and lr/ PNGs to hr.lmdb / lr.lmdb (BasicSR's make_lmdb_from_imgs).

Usage:
    python scripts/make_distilled_lmdb.py datasets/distilled/idc_t91_x2 [--compress-level 1] [--n-thread 8]

Train from the lmdb copies with DistilledPairedDataset and ``io_backend: {type: lmdb}`` (the LR PNG is read; the
float LR copy is not converted). Existing lmdb folders are never overwritten: remove them to rebuild.
"""
import argparse
import sys

import basicsr_distill  # noqa: F401  (compat fixes before basicsr / torchvision)

# isort: split
from basicsr_distill.distilled_set import make_distilled_lmdb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root', help='distilled-set folder (holds distill.json, hr/, lr/)')
    parser.add_argument('--compress-level', type=int, default=1, help='PNG compression level in the lmdb (0-9)')
    parser.add_argument('--multiprocessing-read', action='store_true', help='read the images with a process pool')
    parser.add_argument('--n-thread', type=int, default=8, help='processes for --multiprocessing-read')
    args = parser.parse_args(argv)
    try:
        paths = make_distilled_lmdb(
            args.root,
            compress_level=args.compress_level,
            multiprocessing_read=args.multiprocessing_read,
            n_thread=args.n_thread)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'Wrote {paths["hr"]} and {paths["lr"]}.')
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Check that a distilled set is intact: every file against the SHA-256 its manifest records, and decoded.

Usage:
    python scripts/verify_distilled.py datasets/distilled/idc_t91_x2

Reads every file of every pair (``hr/``, ``lr/``, ``lr_float/``) and, when present, every value of ``hr.lmdb`` /
``lr.lmdb``; checks each against its recorded SHA-256, decodes it and checks its shape, and checks that
``meta_info.txt`` lists the manifest's pairs (see :func:`basicsr_distill.distilled_set.verify_distilled_set`).
Prints one ``BAD`` line per bad file and a summary. Only reads: nothing in the folder changes. Sets written before
format_version 2 record no hashes: their files are decoded only (the summary says how many).

A manifest whose ``scale`` is not the ratio of its pairs' HR to LR sizes is reported ``BAD`` (the files are
checked against those sizes). A set whose run has not finished (``complete: false`` in ``distill.json``: interrupted,
still running, or shards of a multi-process run not merged) is reported ``INCOMPLETE``: its files may be intact, but
it is not the whole set (DistilledPairedDataset refuses it unless ``allow_incomplete: true``).

Exit status: 0 when the set is intact and complete, 1 when a file is bad (complete or not), 2 on a usage error (no
such folder, not a distilled set, or a manifest of a newer format), 3 when every file is intact but the set is
incomplete.
"""
import argparse
import sys

import basicsr_distill  # noqa: F401  (compat fixes before basicsr / torchvision)

# isort: split
from basicsr_distill.distilled_set import NotADistilledSetError, incomplete_problem, verify_distilled_set


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root', help='distilled-set folder (holds distill.json, hr/, lr/, lr_float/)')
    parser.add_argument('--no-lmdb', action='store_true', help='skip the lmdb copies (hr.lmdb, lr.lmdb)')
    args = parser.parse_args(argv)
    try:
        report = verify_distilled_set(args.root, lmdb=False if args.no_lmdb else None)
    except (FileNotFoundError, NotADistilledSetError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    for _, line in report['problems']:
        print(f'BAD {line}')
    size = f'{report["bytes"] / 2**20:.1f} MiB'
    pairs = len(report['manifest']['pairs']) if report['manifest'] is not None else 0
    lmdb = f' (with {len(report["lmdb"])} lmdb)' if report['lmdb'] else ''
    unfinished = incomplete_problem(args.root, report['manifest']) if report['manifest'] is not None else None
    if unfinished:
        print(f'INCOMPLETE {unfinished}: finish the run (rerun it with --auto_resume), or train on it with '
              'allow_incomplete: true.')
    state = f'NOT intact, {len(report["problems"])} bad file(s)' if report['problems'] else 'intact'
    state += ', INCOMPLETE (the run did not finish)' if unfinished else ''
    print(f'{args.root}: {pairs} pairs, {report["files"]} files{lmdb}, {size} read in {report["seconds"]:.2f} s: '
          f'{state}.')
    if report['unhashed']:
        print(f'note: {report["unhashed"]} of these files have no recorded SHA-256 (a set written before '
              'format_version 2, or lmdb copies made before hashes were recorded): they were decoded, not proven '
              'unchanged.')
    return 1 if report['problems'] else 3 if unfinished else 0


if __name__ == '__main__':
    sys.exit(main())

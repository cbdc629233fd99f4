#!/usr/bin/env python
"""Benchmark runner CLI: ``python scripts/benchmark.py -opt options/benchmark/cpu_291.yml [--dry_run | --report]``.

The runner is :mod:`basicsr_distill.benchmark.runner` (its docstring says what a preset runs and writes); keys of a
preset: docs/Benchmark.md, section "Preset keys".
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..')))

from basicsr_distill.benchmark.runner import main

if __name__ == '__main__':
    sys.exit(main())

"""The benchmark runner: a grid of training sets (methods x sizes) x downstream archs x seeds x test sets, through
the BasicSR loops, resumable (``runner``); the preset, its cells and their store (``grid``); the CSV / Markdown /
plot / sample-grid outputs (``report``). ``scripts/benchmark.py`` is its command line."""

"""``privacysf bench``: every headline figure of the project, one command away.

A named suite (:mod:`~privacysf.benchmark.suites`) expands into jobs (:mod:`~privacysf.benchmark.jobs`):
accuracy over seeds for the raw U-Net, Privacy-SF's modes and the reference design; payload per query;
encode/map/decode latency; training cost; and how cost grows with image and dataset size. The runner
(:mod:`~privacysf.benchmark.runner`) stores each finished job's rows in ``results.json`` at once, so a
long suite can be resumed, and :mod:`~privacysf.benchmark.report` turns that file, and nothing else,
into ``benchmarks.md`` with its plots.
"""

"""The stages of `benchmarks/throughput.py`, one module each (loader timing, first batch, loader profile,
purification and denoiser training rates, scaling) plus the folded single-purpose benchmarks
(`loader_speed`, `purify_speed`, `train_denoiser`) and the report (targets, markdown tables).

Every module imports ``_common`` as a top-level module: ``python benchmarks/throughput.py`` puts
``benchmarks/`` on ``sys.path`` (and spawned stage processes inherit it).
"""

"""``csa-jax bench``: csa_jax against PyTorch on the same weights, and the machine description.

The entry is ``benchmark.run_benchmark(benchmark.Settings(...))`` (also importable from here);
``csa_jax.cli.bench`` is its command line. The other modules are its parts:

- ``arena``: what the contestants of one run share (weights, database, inputs);
- ``contestants``: one re-ranking batch or training step per call, per implementation;
- ``parity``: the checks that both sides compute the same model before any timing;
- ``race``: the timed race (first calls apart, interleaved rounds, median);
- ``rows``: a race's timings as result rows (throughput, FLOP/s, memory);
- ``flops``: the matmul cost model; ``peak``: the matmul peak; ``memory``: peak-memory probes;
- ``machine``: the machine's description and torch's devices;
- ``curves`` / ``curve_plots``: the cost curves of ``--curves`` and their PNGs.
"""

from csa_jax.bench.benchmark import Settings, run_benchmark

__all__ = ["Settings", "run_benchmark"]

"""forgetless's benchmarks, a package run from the repository root (``python -m benchmarks.NAME``).

* :mod:`benchmarks.run_all`: the suite (every registered strategy against the plain loop, and the
  other sections of :mod:`benchmarks.suite`), written to ``benchmarks/results/suite.{json,md}``.
* ``bench_*``: one focused benchmark each (core, regularization, replay, startup, backbone, hf).
* :mod:`benchmarks.peers`: forgetless against other libraries, each in its own venv.
* :mod:`benchmarks.common`: the shared mechanics (plain loop, interleaved timing, peak RSS).
"""

"""The sections of the benchmark suite, one module each; :mod:`benchmarks.run_all` runs them.

A section module has

* ``TITLE``: one line for ``--help``;
* ``add_arguments(group)``: its flags (``group`` an argparse argument group);
* ``quick(args)``: shrinks its flags for ``--quick``;
* ``run(args, cache) -> dict``: its JSON-able results (``cache``: :class:`shared.ScenarioCache`);
* ``markdown(results) -> list[str]``: its part of ``suite.md``.
"""

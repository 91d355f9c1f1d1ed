"""Every shipped protocol, looked up by name, run through the experiment code, and listed as
the table of REPRODUCIBILITY.md (:func:`markdown`, so the file cannot drift from the registry)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forgetless.errors import ConfigError, DataError, ForgetlessError, unknown_name
from forgetless.reproduce import cl_baselines, der_2020, van_de_ven_2019
from forgetless.reproduce.protocol import Protocol

PROTOCOLS: dict[str, Protocol] = {
    p.name: p for module in (van_de_ven_2019, der_2020, cl_baselines) for p in module.PROTOCOLS
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; an unknown name is a ConfigError with suggestions."""
    if name not in PROTOCOLS:
        error = unknown_name("protocol", name, list(PROTOCOLS))
        raise ConfigError(str(error).replace("(see `forgetless list`)", "(see `forgetless reproduce --list`)"))
    return PROTOCOLS[name]


def data_available(benchmark: str, data_dir: Path | None = None) -> bool:
    """Whether the data of ``benchmark`` are on this machine (never downloads)."""
    from forgetless.data.benchmarks import get_benchmark
    from forgetless.data.sources import load_dataset

    try:
        load_dataset(get_benchmark(benchmark).dataset, data_dir=data_dir, download=False)
    except ForgetlessError:
        return False
    return True


@dataclass
class Outcome:
    """Our number for a protocol: the metric per seed."""

    protocol: Protocol
    stand_in: bool
    values: list[float]
    result: object
    """The :class:`~forgetless.training.experiment.ExperimentResult` (to save)."""

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values))

    def within_tolerance(self) -> bool | None:
        """Stand-in runs: whether the mean is within the stored tolerance of the reference."""
        measured = self.protocol.measured
        if not self.stand_in or measured is None:
            return None
        return abs(self.mean - measured.reference) <= measured.tolerance


def run_config(protocol: Protocol, stand_in: bool, seeds: int = 1, seed: int = 0, data_dir: Path | None = None):
    """The RunConfig of ``protocol`` (its stand-in's with ``stand_in``); refuses a row forgetless
    cannot run and, before training, data that are not here."""
    from forgetless.config import make_config

    if protocol.needs:
        raise ConfigError(
            f"{protocol.name} needs {'; '.join(protocol.needs)}, which forgetless lacks: pick another row"
        )
    if stand_in:
        values = protocol.stand_in_config()
        if values is None:
            raise ConfigError(
                f"{protocol.name} has no Fashion-MNIST stand-in ({protocol.data} protocols need their own data): "
                f"drop --stand-in and give the data with --data-dir"
            )
    else:
        values = dict(protocol.config)
        if not data_available(protocol.benchmark, data_dir):
            hint = (
                f"run its Fashion-MNIST stand-in: forgetless reproduce {protocol.name} --stand-in"
                if protocol.stand_in_benchmark
                else "give its files with --data-dir"
            )
            raise DataError(f"{protocol.name} needs {protocol.data}, which is not on this machine: {hint}")
    return make_config(**values, seeds=seeds, seed=seed, data_dir=data_dir, download=False)


def run_protocol(
    protocol: Protocol,
    stand_in: bool = False,
    seeds: int = 1,
    seed: int = 0,
    data_dir: Path | None = None,
    progress=None,
) -> Outcome:
    """Run ``protocol`` (or its stand-in) for ``seeds`` seeds and read its metric per seed."""
    from forgetless.training.experiment import run_experiment

    config = run_config(protocol, stand_in, seeds, seed, data_dir)
    result = run_experiment(config, progress=progress)
    combination = config.strategies[0]
    metric = protocol.published.metric
    values = []
    for index, run in enumerate(result.runs[combination]):
        metrics = run.metrics(result.joint_reference(index))
        if metric not in metrics:
            raise ConfigError(f"{protocol.name}: the run reports no {metric} (its scenario is {config.scenario})")
        values.append(float(metrics[metric]))
    return Outcome(protocol, stand_in, values, result)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


MARKDOWN_HEAD = """# Reproducibility

Every published protocol that `forgetless reproduce` ships, generated from the registry in
`src/forgetless/reproduce/` by `forgetless reproduce --markdown > REPRODUCIBILITY.md`
(`tests/test_reproduce.py` checks this file matches it). Accuracies in %.

- **Published**: the number in the source's table; *(unverified)* where the value could not be
  checked against the source text from this machine (the protocol settings were checked in the
  authors' code: see each module's docstring).
- **Stand-in, ours**: the same protocol on Fashion-MNIST (MNIST and CIFAR cannot be downloaded
  here), measured on this machine on one CPU thread: mean over the seeds listed, with the command
  `forgetless reproduce NAME --stand-in --seeds N`. Fashion-MNIST is harder than MNIST, so the
  stand-in's number is a regression reference, not the published number.
  Seconds are wall time per seed on a 2-core machine shared with other jobs (load about 6).
- **Tol.**: how far a later run may land from the stand-in reference: the larger of 3 points and
  4 times the seed spread seen here; the stand-ins marked CI run as `@pytest.mark.slow` tests
  (one seed each).
- **Status**: `stand-in verified` (measured here), `stand-in not measured` (runnable, not run yet:
  `forgetless reproduce NAME --stand-in`), `needs data: ...` (no stand-in; the original data are not
  here), `needs: ...` (forgetless lacks something the protocol uses). No row is `verified here`:
  none of the original data sets are on this machine.

"""


def markdown() -> str:
    """The REPRODUCIBILITY.md text: one table row per protocol."""
    lines = [
        MARKDOWN_HEAD.rstrip("\n"),
        "",
        "| Protocol | Source row | Metric | Published | Stand-in, ours | Tol. | CI | Status | Command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in PROTOCOLS.values():
        m = p.measured
        ours, tolerance, command = "—", "—", "—"
        if m is not None:
            spread = _percent(float(np.std(m.values)))
            ours = f"{_percent(m.reference)} ± {spread} ({len(m.values)} seeds, {m.seconds:.0f} s each)"
            tolerance = _percent(m.tolerance)
        if not p.needs:
            seeds = f" --seeds {len(m.values)}" if m is not None else ""
            command = f"`{p.command()}{seeds}`"
        source = p.source.split(",")[0]
        lines.append(
            f"| `{p.name}` | {source}: {p.row} | {p.published.metric} | {p.published.text()} | {ours} | "
            f"{tolerance} | {'yes' if p.ci else ''} | {p.status()} | {command} |"
        )
    lines.append("")
    return "\n".join(lines)

"""``--profile NAME``: one strategy's run under ``torch.profiler``, the ops by self CPU time."""

from __future__ import annotations

import argparse

from benchmarks.common import library_run
from benchmarks.suite.shared import ScenarioCache, scenario_kind
from forgetless.strategies import discover


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("profiling (instead of the sections)")
    group.add_argument("--profile", default=None, metavar="NAME", help="profile one strategy instead of the suite")
    group.add_argument("--profile-rows", type=int, default=25)


def run(args: argparse.Namespace, cache: ScenarioCache) -> str:
    """One run of ``args.profile`` under ``torch.profiler`` (after a warm-up): the table of ops."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    registry = discover()
    kind = scenario_kind(registry[args.profile]) if args.profile in registry else "class"
    config, scenario = cache.get(args.benchmark, kind)
    library_run(scenario, config, args.profile, 0)  # warm-up
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds, _ = library_run(scenario, config, args.profile, 1)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows)
    return f"{args.profile} ({kind}-IL): {seconds:.2f} s under the profiler\n{table}"

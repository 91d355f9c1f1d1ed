"""Accuracy of forgetless and Avalanche on identical settings, nine methods, over seeds.

Class-IL Split Fashion-MNIST, 5 tasks of 2 classes in the order 0..9, MLP 784-400-400-10, SGD
lr 0.01 momentum 0.9, batch 128, 1 epoch per task, CPU, one thread: forgetless reads
``fl-config.yaml`` beside this file (tools ``forgetless`` and ``forgetless-xavier``, the latter
with ``--init xavier``); Avalanche 0.6.0 runs ``avalanche_strategies.py`` in its own venv (tool
``avalanche``). One process per (tool, method, seed), interleaved seed by seed, method by method,
tool by tool, as ``replay_accuracy.py`` does (whose functions this reuses). Written as
``avalanche_accuracy.json`` (every run, its command, its final accuracy row) and
``avalanche_accuracy.md`` (class-IL ACC mean +- std, per seed, whole-process wall mean +- std).

The same knob, the same value: replay buffer 500 and replay batch 128 (ER, DER, DER++), DER alpha
0.3, DER++ beta 0.5, A-GEM reference batch 256, GEM memory strength 0.5, EWC lambda 10000, SI
strength 10 and damping 0.1, LwF alpha 1 temperature 2 (forgetless gets them as ``--set`` flags,
so the command says them). What still differs, by method (Avalanche 0.6.0 source):

* all: Avalanche's ``SimpleMLP`` trains all 10 outputs from the first experience and is built
  with PyTorch's default init (as ``forgetless``; ``forgetless-xavier`` is Mammoth's init);
  forgetless's class-IL head switches outputs on as their classes arrive. Evaluation batch 128
  (Avalanche) vs 4096 (forgetless) does not change accuracy.
* er: Avalanche's buffer is filled at the end of each experience (``ExperienceBalancedBuffer``:
  500/t random rows per past experience), so it never replays the current experience;
  forgetless's reservoir is updated every step and also replays current-task rows.
* der, derpp: Avalanche stores logits after training on the experience (class-balanced buffer,
  filled at its end), forgetless during training (reservoir); Avalanche's DER++ takes its
  cross-entropy on the same replay batch as the logit term, forgetless draws a second batch.
* agem, gem: Avalanche keeps ``patterns_per_exp=100`` rows per experience (100 after the first,
  500 after the last; A-GEM draws 256/t per experience), forgetless a 500-row buffer shared by
  the tasks seen (reservoir for A-GEM, balanced by task for GEM). Avalanche's GEM ridge is an
  absolute 1e-3 on the QP diagonal, forgetless's 1e-8 times its mean.
* ewc: Avalanche adds ``lambda * sum F (theta - theta*)^2`` with F the mean over minibatches of
  the squared gradient of the minibatch-mean loss (whole experience); forgetless ``lambda / 2``
  (the paper's) with a per-sample Fisher of model-sampled labels on 1024 inputs.
* si: Avalanche's penalty is ``lambda / 2 * sum omega (theta - theta*)^2`` with each importance
  clipped at 0.001; forgetless ``c * sum omega (...)^2`` unclipped.
* lwf: Avalanche adds ``alpha * KL``, forgetless ``alpha * T^2 * KL`` (4x at T = 2), both over
  the outputs active in the old model.

A run that fails counts as failed (listed in the table, left out of the mean): forgetless stops
with exit 2 when the loss becomes non-finite; Avalanche trains on with NaN weights and reports
0.100 (one class predicted), so ``avalanche_strategies.py`` prints ``non-finite weights`` and that
run is read as failed. At lambda 10000 EWC diverges in both on this SGD setting (at the third task);
``--set ewc.ewc_lambda=L --avalanche-arg=--ewc-lambda=L --methods ewc --name ...`` reruns it at
another lambda.

Standard library only; run it with the forgetless venv's python. Avalanche is set up as
README.md beside this file says (with ``quadprog`` for GEM); when it is missing it is skipped
with a one-line note.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from benchmarks.peers.peer_paths import ROOT, add_tool_paths
from benchmarks.peers.replay_accuracy import HERE, Tool, forgetless_tool, parse_seeds, run_interleaved, write_results

METHODS = ("naive", "er", "der", "derpp", "agem", "gem", "ewc", "si", "lwf")
FORGETLESS_SETS = (
    "agem.replay_batch_size=256",
    "gem.memory_strength=0.5",
    "ewc.ewc_lambda=10000",
    "si.c=10",
    "si.xi=0.1",
    "lwf.alpha=1",
    "lwf.temperature=2",
)
AVALANCHE_BUFFER = tuple(
    f"--set={name}.{option}"
    for name in ("er", "der", "derpp")
    for option in ("fill=task-end", "selection=balanced", *(("second_sample=shared",) if name == "derpp" else ()))
)
"""Avalanche's replay buffers in forgetless (tool ``forgetless-avalanche-buffer``): filled after
each experience, class-balanced; DER++'s cross-entropy on the logit term's rows."""
AVALANCHE_ACC = re.compile(r"final average accuracy: ([0-9.]+)")
AVALANCHE_ROW = re.compile(r"after experience \d+: ([0-9. ]+)")


def avalanche_tool(python: Path, module: str, extra: list[str]) -> Tool:
    """``python -m MODULE METHOD --seed SEED`` in the Avalanche venv, from the repository root."""

    def command(method: str, seed: int, _: Path) -> list[str]:
        return [str(python), "-W", "ignore", "-m", module, method, "--seed", str(seed), *extra]

    def read(output: str, _: Path, __: str) -> tuple[float | None, float | None, list[float] | None]:
        if "non-finite weights" in output:  # Avalanche trains on; a NaN model predicts one class
            raise ValueError("non-finite weights: " + next(x for x in output.splitlines() if "non-finite" in x))
        found, rows = AVALANCHE_ACC.findall(output), AVALANCHE_ROW.findall(output)
        if not found:
            return None, None, None
        return float(found[-1]), None, [float(v) for v in rows[-1].split()] if rows else None

    settings = f"{module.rpartition('.')[2]}.py {' '.join(extra)}".strip()
    settings += " (SimpleMLP, PyTorch init, all 10 outputs from task 1)"
    return Tool("avalanche", settings, ROOT, command, read)


def tools(args: argparse.Namespace) -> list[Tool]:
    """The tools asked for that are set up here (a note for each one skipped)."""
    extra = [f"--set={item}" for item in (*FORGETLESS_SETS, *args.set)]
    fl, cfg = [str(args.forgetless)], args.config
    found = {
        "forgetless": forgetless_tool("forgetless", f"{cfg.name} (PyTorch init)", fl, cfg, extra),
        "forgetless-xavier": forgetless_tool(
            "forgetless-xavier", f"{cfg.name} --init xavier", fl, cfg, [*extra, "--init", "xavier"]
        ),
        "forgetless-avalanche-buffer": forgetless_tool(
            "forgetless-avalanche-buffer",
            f"{cfg.name} (PyTorch init) + {' '.join(AVALANCHE_BUFFER)}",
            fl,
            cfg,
            [*extra, *AVALANCHE_BUFFER],
        ),
    }
    if args.avalanche_python.is_file():
        module = "benchmarks.peers.avalanche_strategies"
        found["avalanche"] = avalanche_tool(args.avalanche_python, module, args.avalanche_arg)
    else:
        print(f"note: Avalanche skipped (no {args.avalanche_python})")
    return [found[name] for name in args.tools.split(",") if name in found]


def parse_args() -> argparse.Namespace:
    """Command-line flags; the Avalanche venv defaults to $PEERS_DIR/venv-avalanche."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of " + ",".join(METHODS))
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,2 (default 0-4)")
    p.add_argument(
        "--tools",
        default="forgetless,forgetless-xavier,avalanche",
        help="comma-separated: forgetless, forgetless-xavier, forgetless-avalanche-buffer, avalanche",
    )
    p.add_argument("--set", action="append", default=[], help="more forgetless --set STRATEGY.PARAM=VALUE")
    p.add_argument(
        "--avalanche-arg", action="append", default=[], help="flag for avalanche_strategies.py, e.g. --buffer-size=200"
    )
    p.add_argument("--config", type=Path, default=HERE / "fl-config.yaml", help="forgetless config")
    add_tool_paths(p, "avalanche")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    p.add_argument("--out", type=Path, default=HERE.parent / "results" / "peers")
    p.add_argument("--name", default="avalanche_accuracy", help="file stem of the outputs (default avalanche_accuracy)")
    args = p.parse_args()
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}: use some of {', '.join(METHODS)}")
    return args


def main() -> None:
    args = parse_args()
    methods, seeds = args.methods.split(","), parse_seeds(args.seeds)
    found = tools(args)
    load = run_interleaved(found, methods, seeds, args.timeout)
    write_results(found, methods, seeds, args.out, args.name, load)


if __name__ == "__main__":
    main()

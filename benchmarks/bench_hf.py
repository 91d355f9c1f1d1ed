"""Speed and memory of fine-tuning mitigations on a byte-level GPT-2 (random init, no data needed).

Tokens/s of plain full fine-tuning vs L2-SP, EWC, replay (25% of every batch through a second
loss) and LoRA, each in the same AdamW loop; and the size and peak memory of EWC's Fisher.
Targets (issue 6): penalty overhead <= 1.3x, LoRA no slower than full fine-tuning.

    python -m benchmarks.bench_hf --out /tmp/bench_hf [--steps 20 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch


def _loop(model, ids: torch.Tensor, steps: int, penalty=None, replay: float = 0.0) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    n_replay = int(round(replay * 16))

    def step() -> None:
        batch = ids[torch.randint(0, ids.shape[0], (16,), generator=generator)]
        if n_replay:
            task, general = batch[n_replay:], batch[:n_replay]
            loss = (
                task.shape[0] * model(input_ids=task, labels=task).loss
                + general.shape[0] * model(input_ids=general, labels=general).loss
            ) / 16
        else:
            loss = model(input_ids=batch, labels=batch).loss
        if penalty is not None:
            loss = loss + penalty.penalty(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * 16 * ids.shape[1] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fisher-samples", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from peft import LoraConfig, get_peft_model

    from forgetless.integrations.hf import Perplexity, estimate_fisher, ewc_penalty, l2sp_penalty
    from forgetless.integrations.hf.tiny import tiny_gpt2

    ids = torch.randint(0, 256, (256, args.seq_len), generator=torch.Generator().manual_seed(0))
    results: dict[str, dict[str, float]] = {}

    def measure(name: str, model, **kwargs) -> None:
        tokens = _loop(model, ids, args.steps, **kwargs)
        results[name] = {"tokens_per_second": tokens}
        print(f"{name:>8}: {tokens:,.0f} tokens/s", flush=True)

    measure("plain", tiny_gpt2())
    model = tiny_gpt2()
    measure("l2sp", model, penalty=l2sp_penalty(model, 1.0))
    model = tiny_gpt2()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    fisher = estimate_fisher(
        model, Perplexity("general", ids[:4], ids), args.fisher_samples, torch.Generator().manual_seed(0)
    )
    fisher_seconds = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    measure("ewc", model, penalty=ewc_penalty(model, fisher, 10.0))
    measure("replay", tiny_gpt2(), replay=0.25)
    lora = get_peft_model(tiny_gpt2(), LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_fc"]))
    measure("lora", lora)

    plain = results["plain"]["tokens_per_second"]
    for entry in results.values():
        entry["slowdown_vs_plain"] = plain / entry["tokens_per_second"]
    n_params = sum(p.numel() for p in tiny_gpt2().parameters())
    report = {
        "model": "byte-level GPT-2, 4 layers, 256 wide",
        "parameters": n_params,
        "seq_len": args.seq_len,
        "batch_size": 16,
        "steps": args.steps,
        "threads": args.threads,
        "runs": results,
        "fisher": {
            "bytes": sum(v.numel() * v.element_size() for v in fisher.values()),
            "bytes_per_parameter": 4,
            "samples": args.fisher_samples,
            "seconds": fisher_seconds,
            "peak_rss_growth_bytes": max(0, rss_after - rss_before) * 1024,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_hf.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: round(v["slowdown_vs_plain"], 3) for k, v in results.items()}))
    print(f"results in {args.out / 'bench_hf.json'}")


if __name__ == "__main__":
    main()

"""Mixture-of-experts growth at equal active FLOPs: dense vs fixed top-2 MoE vs DynMoE, and MoE growth plans.

Methods, every one trained on the same FLOP budget (``budget_mode="flops"``; FLOPs of an MoE count its
*active* parameters per token: the planned top-k for a fixed router, the routers' measured choices for
top-any, so a DynMoE run that activates more experts trains on fewer tokens):

- ``dense``: the dense model from scratch;
- ``moe_top2``: a fixed softmax top-2 MoE of ``--experts`` experts from scratch;
- ``dynmoe``: a top-any (DynMoE, Guo et al. 2025) MoE from scratch, experts fixed;
- ``upcycle``: dense, upcycled to the top-2 MoE after ``--growth-fraction`` of the tokens;
- ``dynamic``: dense, upcycled to the top-any MoE, then the expert count adapts (``--interval``);
- ``dense_growth``: dense growth for reference (``g_stack``: half the depth, stacked).

Reports, per method over ``--seeds``: the final validation loss at equal FLOPs (mean and spread), the
FLOPs actually spent, the mean active experts per token and the load imbalance (``E * sum f^2``; 1 is
balanced) at the last evaluation, and the experts per layer over time (expert events). No timing.

    python benchmarks/moe.py                          # the lead's run (minutes on a CPU)
    python benchmarks/moe.py --quick                  # a seconds-long check that everything runs
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import statistics
import tempfile
from pathlib import Path

CORPUS_MODULES = ("json.decoder", "json.encoder", "argparse", "textwrap", "string", "calendar")
METHODS = ("dense", "moe_top2", "dynmoe", "upcycle", "dynamic", "dense_growth")


def method_plan(name: str, args) -> tuple[str, dict]:
    """(built-in plan name, model changes) of a method."""
    moe = {"n_expert": args.experts, "moe_top_k": 2}
    return {"dense": ("scratch", {}), "moe_top2": ("scratch", moe),
            "dynmoe": ("scratch", {**moe, "moe_router": "topany"}), "upcycle": ("upcycle", moe),
            "dynamic": ("dynamic", {**moe, "moe_router": "topany"}), "dense_growth": ("g_stack", {})}[name]


def run_method(name: str, seed: int, data, args) -> dict:
    from transformer_grow.model import preset
    from transformer_grow.plans.accounting import flops_per_token
    from transformer_grow.plans.builders import PlanOptions
    from transformer_grow.plans.experts import ExpertAdaptation
    from transformer_grow.run.manager import GrowthManager
    from transformer_grow.train import TrainConfig

    base = preset("micro", vocab_size=data.vocab_size, n_layer=args.layers, d_model=args.d_model,
                  n_head=max(1, args.d_model // 16), seq_len=args.seq_len)
    plan, changes = method_plan(name, args)
    target = base.replace(**changes)
    # one FLOP budget for all: the top-2 MoE's active FLOPs over --tokens tokens
    reference = flops_per_token(base.replace(n_expert=args.experts, moe_top_k=2))
    budget_tokens = max(1, round(args.tokens * reference / flops_per_token(target)))
    step_tokens = args.batch_size * args.seq_len
    budget_tokens = max(step_tokens * args.evals, budget_tokens // step_tokens * step_tokens)
    adaptation = ExpertAdaptation(interval=args.interval, window=max(1, args.interval // 2),
                                  new_threshold=args.new_threshold)
    options = PlanOptions(growth_fraction=args.growth_fraction, expert_adaptation=adaptation)
    train = TrainConfig(batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup, max_steps=1,
                        device="cpu", seed=seed)
    manager = GrowthManager(target, plan, budget_tokens=budget_tokens, train_config=train, plan_options=options,
                            n_evals=args.evals, eval_windows=args.eval_windows, log=None)
    record = manager.run(data).record
    routing = [p for stage in record.stages for p in stage.get("routing", [])]
    last = routing[-1] if routing else {}
    return {"method": name, "seed": seed, "final_val_loss": record.final_val_loss, "flops": record.total_flops,
            "budget_flops": manager.budget, "tokens": record.total_tokens,
            "mean_active_experts": last.get("mean_active_experts"), "load_imbalance": last.get("load_imbalance"),
            "experts_over_time": [(e["step"], e.get("experts")) for e in record.events if "experts" in e],
            "routing": routing}


def summarise(runs: list[dict]) -> list[str]:
    lines = [f"{'method':<13} {'val loss (mean +- sd)':>22} {'FLOPs/budget':>13} {'active experts':>15} "
             f"{'imbalance':>10}"]
    for name in METHODS:
        mine = [r for r in runs if r["method"] == name]
        if not mine:
            continue
        losses = [r["final_val_loss"] for r in mine]
        spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
        spent = statistics.mean(r["flops"] / r["budget_flops"] for r in mine)
        active = [r["mean_active_experts"] for r in mine if r["mean_active_experts"] is not None]
        imbalance = [r["load_imbalance"] for r in mine if r["load_imbalance"] is not None]
        lines.append(f"{name:<13} {statistics.mean(losses):>14.4f} +- {spread:<5.3f} {spent:>13.3f} "
                     f"{statistics.mean(active) if active else float('nan'):>15.2f} "
                     f"{statistics.mean(imbalance) if imbalance else float('nan'):>10.3f}")
    for r in runs:
        if r["experts_over_time"]:
            lines.append(f"{r['method']} seed {r['seed']}: experts per layer over steps {r['experts_over_time']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings: check that every method runs")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    parser.add_argument("--tokens", type=int, default=400_000, help="tokens of the top-2 MoE at the budget")
    parser.add_argument("--experts", type=int, default=4, help="experts of the MoE models (default 4)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--evals", type=int, default=10)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--growth-fraction", type=float, default=0.3, help="dense share of upcycle/dynamic")
    parser.add_argument("--interval", type=int, default=50, help="dynamic: steps between expert decisions")
    parser.add_argument("--new-threshold", default="init", choices=("init", "exact"))
    parser.add_argument("--out", default=None, help="write the runs as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.tokens, args.layers, args.d_model, args.seq_len = 1, 12_000, 2, 32, 32
        args.batch_size, args.warmup, args.evals, args.eval_windows, args.interval = 4, 2, 4, 4, 10

    import torch

    from transformer_grow.data import DataConfig, prepare_data

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="tgrow-moe-"))
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(inspect.getsource(importlib.import_module(m)) for m in CORPUS_MODULES))
    data = prepare_data(DataConfig(corpus=str(corpus), tokenizer="bytes", cache_dir=str(root / "cache")),
                        progress=False)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    runs = [run_method(name, seed, data, args) for seed in range(args.seeds) for name in methods]
    print("\n".join(summarise(runs)))
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()

"""Train a micro model under torchrun with DDP or FSDP2, grow it mid-run, and check the ranks agree.

    torchrun --standalone --nproc_per_node 2 tests/dist_demo.py --parallel fsdp
    torchrun --standalone --nproc_per_node 2 tests/dist_demo.py --parallel ddp --device cuda

Data: the embedded ``stdlib`` corpus with the byte tokenizer (rank 0 fills the token cache first).
The model is the ``micro`` preset, grown to twice its depth after ``--steps-before`` steps with
``--method`` (AdamW moments carried through the parameter map, LR re-warmed), then trained for
``--steps-after`` steps. Rank 0 prints the losses and counters; the exit code is 0 when every rank
holds the same full model as rank 0 at the end (DDP: each rank's own replica; FSDP: the copies
gathered from the shards), 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.distributed as dist

from transformer_grow.data import DataConfig, prepare_data
from transformer_grow.errors import ConfigError
from transformer_grow.model import preset
from transformer_grow.run.event import grow_trainer
from transformer_grow.train import Trainer
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.distributed import STRATEGIES, distributed_session, main_rank_first, make_trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python tests/dist_demo.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parallel", "--strategy", dest="parallel", choices=STRATEGIES, default="ddp",
                        help="data-parallel wrapper (--strategy: an alias)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda:LOCAL_RANK with NCCL, or the CPU with gloo (auto: CUDA when available)")
    parser.add_argument("--method", default="stack", help="depth growth operator (stack, insert_zero, ...)")
    parser.add_argument("--steps-before", type=int, default=20, help="steps before growth")
    parser.add_argument("--steps-after", type=int, default=20, help="steps after growth")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (sequences per step)")
    parser.add_argument("--seq-len", type=int, default=64, help="context length")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the data order")
    parser.add_argument("--out", default=None, help="run directory (metrics and checkpoint, written by rank 0)")
    parser.add_argument("--cache-dir", default=None, help="token cache (default: $TGROW_CACHE or ~/.cache)")
    return parser.parse_args(argv)


def max_difference_from_main(trainer: Trainer) -> float:
    """Largest |difference| between this rank's full model and rank 0's (all ranks take part)."""
    state = trainer.parallel.wrapped.full_model_state()
    worst = torch.zeros((), dtype=torch.float64, device=trainer.device)
    for name in sorted(state):
        mine = state[name].detach().to(trainer.device, torch.float64)
        main = mine.clone()
        dist.broadcast(main, src=0)
        worst = torch.maximum(worst, (mine - main).abs().max())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if min(args.steps_before, args.steps_after) < 1:
        raise ConfigError("--steps-before and --steps-after must be >= 1")
    with distributed_session(device=args.device) as env:
        with main_rank_first(env):
            data = prepare_data(DataConfig(corpus="stdlib", tokenizer="bytes", cache_dir=args.cache_dir),
                                progress=False)
        config = preset("micro", vocab_size=data.vocab_size, seq_len=args.seq_len)
        train_config = TrainConfig(batch_size=args.batch_size, max_steps=args.steps_before + args.steps_after,
                                   warmup_steps=max(1, args.steps_before // 4), lr=3e-3, eval_interval=0,
                                   eval_windows=8, log_interval=max(1, args.steps_before // 4), ckpt_interval=0,
                                   device=env.device.type, seed=args.seed)
        trainer = make_trainer(config, train_config, data, out_dir=args.out, strategy=args.parallel, env=env)
        say = print if env.is_main else (lambda *a, **k: None)
        say(f"{args.parallel} on {env.world_size} ranks ({env.backend}, {env.device.type}): "
            f"{config.n_layer} layers, {trainer.tokens_per_step} tokens per step")
        try:
            loss = trainer.train_steps(args.steps_before)
            before = trainer.evaluate()
            report = grow_trainer(trainer, config.replace(n_layer=2 * config.n_layer), args.method,
                                  rewarmup_steps=max(1, args.steps_after // 4), seed=args.seed + 1).report
            after = trainer.evaluate()
            say(f"step {trainer.step}: train loss {loss:.4f}; grew {config.n_layer} -> {trainer.model.config.n_layer} "
                f"layers by {report.method} ({report.kind}): val loss {before:.4f} -> {after:.4f}")
            summary = trainer.fit()
            difference = max_difference_from_main(trainer)
        finally:
            trainer.close()
        say(f"step {summary.step}: train loss {summary.train_loss:.4f}, val loss {summary.val_loss:.4f}, "
            f"{summary.tokens:,} tokens, {summary.flops:.3g} FLOPs (global)")
        say(f"largest parameter difference from rank 0: {difference:.3g}")
    return 0 if difference == 0.0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        print(f"dist_demo: error: {e}", file=sys.stderr)
        sys.exit(2)

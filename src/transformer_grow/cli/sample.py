"""`tgrow sample`: generate text from a checkpoint.

    tgrow sample runs/micro --prompt "def " --max-new-tokens 200 --temperature 0.8 --top-k 50 --seed 0
"""

from __future__ import annotations

import argparse
import math

import torch

from transformer_grow.cli.eval import CHECKPOINT_DATA_FLAGS, data_config_of
from transformer_grow.data import prepare_data
from transformer_grow.device import resolve_device
from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.train.checkpoint import load_checkpoint, model_from_checkpoint
from transformer_grow.train.config import DEVICES


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sample", help="generate text from a checkpoint",
        description="Continue a prompt with a trained model (autoregressive sampling; greedy with "
                    "--temperature 0). Prints prompt plus continuation for each sample.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint directory or a run directory")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--prompt-ids", default=None, metavar="IDS",
                        help="comma-separated token ids to continue instead of --prompt (for pre-tokenized data "
                             "without a tokenizer)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="softmax temperature; 0 means greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sample only among the k most likely tokens (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    parser.add_argument("--num-samples", type=int, default=1, help="independent samples to draw (default: 1)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps "
                                                          "(default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="do not show data-preparation progress bars")
    CHECKPOINT_DATA_FLAGS.add_to(parser)
    parser.set_defaults(func=run)
    return parser


def _validate(args: argparse.Namespace) -> None:
    require(1 <= args.max_new_tokens <= 1 << 20,
            f"--max-new-tokens={args.max_new_tokens} is not allowed; it must be from 1 to {1 << 20:,}")
    require(math.isfinite(args.temperature) and 0 <= args.temperature <= 1e4,
            f"--temperature={args.temperature} is not allowed; it must be a number from 0 (greedy) to 10000")
    require(args.top_k is None or 1 <= args.top_k <= 1 << 32,
            f"--top-k={args.top_k} is not allowed; it must be from 1 to {1 << 32:,}")
    require(1 <= args.num_samples <= 10_000, f"--num-samples={args.num_samples} is not allowed; it must be from 1 "
                                             "to 10,000")
    require(0 <= args.seed < 2**63, f"--seed={args.seed} is not allowed; it must be from 0 to 2**63 - 1")


def _prompt_ids(args: argparse.Namespace, tokenizer, vocab_size: int) -> list[int]:
    if args.prompt_ids is not None:
        try:
            ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise ConfigError(
                f"--prompt-ids={args.prompt_ids!r} is not allowed; give comma-separated integers"
            ) from None
    else:
        if tokenizer is None:
            raise ConfigError("this checkpoint's data has no tokenizer (pre-tokenized corpus); give --prompt-ids")
        ids = tokenizer.encode(args.prompt)
    require(len(ids) > 0, "the prompt is empty; give a non-empty --prompt or --prompt-ids")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    require(not bad, f"prompt token ids {bad[:5]} are outside the model's vocabulary [0, {vocab_size})")
    return ids


def run(args: argparse.Namespace) -> int:
    _validate(args)
    choice("--device", args.device, DEVICES)
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    data = prepare_data(data_config_of(ckpt.train_state, args), progress=not args.no_progress)
    tokenizer = data.tokenizer
    ids = _prompt_ids(args, tokenizer, ckpt.model_config.vocab_size)
    model = model_from_checkpoint(ckpt).to(device).eval()
    generator = torch.Generator(device=device).manual_seed(args.seed)
    prompt = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)
    out = model.generate(prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         generator=generator)
    for i, row in enumerate(out.tolist()):
        if i:
            print("\n" + "-" * 40)
        print(tokenizer.decode(row) if tokenizer is not None else " ".join(map(str, row)))
    return 0

"""`tgrow eval`: validation loss of a checkpoint on its data's fixed validation windows.

    tgrow eval runs/micro
    tgrow eval runs/micro/checkpoint --windows 256 --json
"""

from __future__ import annotations

import argparse
import math

from transformer_grow.cli.common import DATA_FLAGS, parse_count
from transformer_grow.data import DataConfig, prepare_data
from transformer_grow.device import resolve_device
from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.io import json_text
from transformer_grow.train.checkpoint import load_checkpoint, model_from_checkpoint
from transformer_grow.train.config import DEVICES, TrainConfig
from transformer_grow.train.evaluate import evaluate_windows
from transformer_grow.train.memory import check_eval_memory
from transformer_grow.train.mlm import evaluate_masked, masked_lm_for

MAX_WINDOWS = 1 << 20
LOG_MAX_FLOAT = 709.0  # math.exp overflows above about 709.78

# eval and sample read a checkpoint: its data settings are the defaults the data flags override.
CHECKPOINT_DATA_FLAGS = DATA_FLAGS.variant(title="data (override the checkpoint's)",
                                           defaults_from="the checkpoint's")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval", help="validation loss of a checkpoint",
        description="Mean next-token cross-entropy (fp32) of a checkpoint on fixed, evenly spaced windows of "
                    "the validation split of the data it was trained on.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint directory or a run directory")
    parser.add_argument("--windows", type=parse_count, default=None,
                        help="number of validation windows (default: the run's eval_windows)")
    parser.add_argument("--batch-size", type=parse_count, default=16, help="windows per forward pass (default: 16)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps "
                                                          "(default: auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    parser.add_argument("--no-progress", action="store_true", help="do not show data-preparation progress bars")
    CHECKPOINT_DATA_FLAGS.add_to(parser)
    parser.set_defaults(func=run)
    return parser


def data_config_of(train_state: dict, args: argparse.Namespace) -> DataConfig:
    """The checkpoint's data settings with any data flags applied (shared by eval and sample)."""
    settings = {**(train_state.get("data_config") or {}), **CHECKPOINT_DATA_FLAGS.given(args)}
    if not settings:
        raise ConfigError(f"checkpoint {args.checkpoint!r} records no data settings; give them with "
                          "--corpus/--tokenizer/--vocab-size")
    config = DataConfig(**settings)
    config.validate()
    return config


def run(args: argparse.Namespace) -> int:
    require(args.windows is None or 1 <= args.windows <= MAX_WINDOWS,
            f"--windows={args.windows} is not allowed; it must be from 1 to {MAX_WINDOWS:,}")
    require(1 <= args.batch_size <= MAX_WINDOWS,
            f"--batch-size={args.batch_size} is not allowed; it must be from 1 to {MAX_WINDOWS:,}")
    choice("--device", args.device, DEVICES)
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    state = ckpt.train_state
    data_config = data_config_of(state, args)
    windows = args.windows or (state.get("train_config") or {}).get("eval_windows", TrainConfig.eval_windows)
    data = prepare_data(data_config, progress=not args.no_progress)
    recorded = state.get("data_fingerprint")
    if recorded is not None and recorded != data.fingerprint:
        raise ConfigError(f"checkpoint {args.checkpoint!r} was trained on data with fingerprint {recorded}, but "
                          f"these data settings give {data.fingerprint}; evaluate on the same corpus and tokenizer")
    check_eval_memory(ckpt.model_config, windows, args.batch_size, args.device)
    model = model_from_checkpoint(ckpt).to(device)
    seq_len = model.config.seq_len
    val_windows = data.val_windows(seq_len, windows)
    train_config = state.get("train_config") or {}
    objective = masked_lm_for(train_config.get("objective", "auto"), train_config.get("mask_token_id"),
                              train_config.get("mlm_probability", 0.15), model.config, data.vocab_size)
    if objective is None:
        loss = evaluate_windows(model, val_windows, args.batch_size, device)
    else:  # a bidirectional model: masked-LM loss under the fixed validation mask, as in training
        loss = evaluate_masked(model, val_windows, args.batch_size, device, objective)
    perplexity = math.exp(loss) if loss < LOG_MAX_FLOAT else math.inf  # nan stays nan
    result = {"val_loss": loss, "perplexity": perplexity, "windows": windows, "seq_len": seq_len,
              "step": state.get("step"), "tokens": state.get("tokens"), "checkpoint": str(args.checkpoint)}
    if args.json:
        print(json_text(result))
    else:
        print(f"val_loss {loss:.4f} (perplexity {perplexity:.2f}) on {windows} windows of {seq_len} tokens; "
              f"checkpoint {args.checkpoint} at step {state.get('step')}")
    return 0

"""`tgrow grow`: grow a saved checkpoint to a larger config and write a checkpoint that trains on.

    tgrow grow runs/tiny --to small --method stack+clone --out runs/tiny-grown
    tgrow grow runs/tiny --to bigger.yaml --depth insert_zero --ffn split --noise cancel --out runs/g
    tgrow train --resume runs/tiny-grown --max-steps 2000

``--to`` is a preset name (its sizes; every other setting from the checkpoint) or a YAML/JSON file
whose model settings (a ``model`` section or flat keys, optionally a ``preset``) override the
checkpoint's config. The preservation report is printed and written to ``OUT/growth_report.json``;
the grown checkpoint goes to ``OUT/checkpoint`` with its optimizer state grown through the
parameter map (``--optimizer fresh`` drops it) and the train state carried (step, tokens, FLOPs,
schedule, data), so ``tgrow train --resume OUT`` continues the run.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch

from transformer_grow.cli.common import load_config_file
from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.io import atomic_write_json, check_directory_path
from transformer_grow.model import PRESETS, ModelConfig
from transformer_grow.model.sharing import unshared_config
from transformer_grow.model.sizing import is_size, target_for_size
from transformer_grow.operators import grow, grow_optimizer_state, target_config
from transformer_grow.operators.composite import CHOICES, plan
from transformer_grow.operators.depth import WHOLE_FACTOR_METHODS
from transformer_grow.operators.steps import DEFAULTS, resolve_choices
from transformer_grow.train.checkpoint import (
    CHECKPOINT_DIRNAME,
    Checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    resolve_checkpoint_dir,
    save_checkpoint,
)
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.memory import check_training_memory

REPORT_FILE = "growth_report.json"
PROBE_WINDOWS = 8


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "grow",
        help="grow a checkpoint to a larger model (depth, width, heads, FFN, context, experts)",
        description="Grow the model of CHECKPOINT_DIR to the config given by --to with function-preserving "
        "(or measured) growth operators; print the preservation report and write a grown, "
        "resumable checkpoint to --out.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT_DIR", nargs="?", default=None,
                        help="a checkpoint or run directory (or --hf PATH)")
    parser.add_argument("--hf", default=None, metavar="PATH",
                        help="grow a Hugging Face model directory instead (GPT-2, Llama, Mistral, Qwen2, Mixtral, "
                        "Qwen2-MoE); --out then receives an HF directory with growth_record.json; --to may also "
                        "be a size such as 1.3B")
    parser.add_argument("--hf-seq-len", type=int, default=None, metavar="N",
                        help="--hf, RoPE models: the context to certify at (default max_position_embeddings, "
                        "at most 2048)")
    parser.add_argument(
        "--to",
        default=None,
        metavar="PRESET_SIZE_OR_FILE",
        help=f"target: a preset ({', '.join(PRESETS)}), a parameter count (e.g. 350M, 1.2e8: the model's shape "
        "scaled, in whole multiples where the depth/width methods need them) or a YAML/JSON file of model settings "
        "(missing settings keep the checkpoint's values); a checkpoint with cross-layer sharing is unshared first "
        "(exact), then grown; not needed with --method unshare (the same model, unshared)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help=f"run directory for the grown checkpoint ({CHECKPOINT_DIRNAME}/) and {REPORT_FILE}",
    )
    parser.add_argument(
        "--method",
        default=None,
        help="shorthand for the depth and/or width method, e.g. stack, clone or stack+clone; unshare (a model with "
             "cross-layer sharing: every layer gets its own copy, exact), alone or first, e.g. unshare+stack",
    )
    for dim in ("depth", "width", "heads", "ffn", "seq", "experts"):
        parser.add_argument(f"--{dim}", default=None, help=f"{dim} method: {', '.join(CHOICES[dim])}")
    group = parser.add_argument_group("operator options")
    group.add_argument(
        "--noise",
        default="none",
        help="symmetry breaking on cloned/split units: none, cancel "
        "(exact, +e/-e across copies) or plain (approximate)",
    )
    group.add_argument("--noise-std", type=float, default=1e-3, help="std of the symmetry-breaking noise")
    group.add_argument("--seed", type=int, default=0, help="seed of fresh initialisation, noise and choices")
    group.add_argument(
        "--layer-sources",
        default=None,
        metavar="I,J,...",
        help="depth=layer_map: old block index of every new block, e.g. 0,1,2,3,2,3",
    )
    group.add_argument(
        "--insert-positions",
        default=None,
        metavar="I,J,...",
        help="depth=insert_zero/insert_random: insert a block after these old blocks (-1: first)",
    )
    group.add_argument("--block-init", default=None, help="depth=insert_zero: copy (LLaMA-Pro) or random")
    group.add_argument("--router-init", default=None, help="experts: new router rows random or zero")
    group.add_argument("--expert-init", default=None, help="experts=add: new experts copy or random")
    group.add_argument(
        "--no-rescale-eps",
        dest="rescale_eps",
        action="store_false",
        default=None,
        help="width=zero_pad: keep norm_eps (RMSNorm then only approximately preserved)",
    )
    state = parser.add_argument_group("training state")
    state.add_argument(
        "--optimizer",
        default="carry",
        help="carry (grow the AdamW moments through the parameter map) or fresh (drop them)",
    )
    state.add_argument(
        "--rewarmup-steps",
        type=int,
        default=0,
        help="re-warm the learning rate linearly over this many steps after growth (0: none)",
    )
    parser.set_defaults(func=run)
    return parser


def operator_arguments(args: argparse.Namespace) -> tuple[dict, dict]:
    """The operator options given on the command line and the per-dimension operator choices."""
    options = {
        k: v
        for k, v in {
            "layer_sources": _index_list(args.layer_sources, "--layer-sources"),
            "insert_positions": _index_list(args.insert_positions, "--insert-positions"),
            "block_init": args.block_init,
            "router_init": args.router_init,
            "expert_init": args.expert_init,
            "rescale_eps": args.rescale_eps,
        }.items()
        if v is not None
    }
    return options, {dim: getattr(args, dim) for dim in ("depth", "width", "heads", "ffn", "seq", "experts")}


def _index_list(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be comma-separated integers, e.g. 0,1,2,3") from None


def resolve_target(to: str | None, source: ModelConfig, method: str | None = None,
                   choices: dict[str, str | None] | None = None) -> ModelConfig:
    """``--to``: a preset name, a parameter count (``50K``, ``1.2e8``: :func:`size_target`) or a config file
    whose model settings override the checkpoint's. A shared model (cross-layer sharing) grows by unsharing
    first, so its target is read against the unshared model and is unshared unless the file says otherwise;
    without ``--to``, ``--method unshare`` unshares the model and changes nothing else."""
    if to is None:
        require(method == "unshare", "--to is required (a preset, a size such as 350M, or a YAML/JSON file), "
                                     "except with --method unshare")
        require(source.share != "none", "--method unshare: this checkpoint has no cross-layer sharing (share='none')")
        return source.replace(share="none")
    base = unshared_config(source) if source.share != "none" else source  # e.g. share_layers of 2 layers, not 4
    target = size_target(to, base, method, choices) if is_size(to) else _target_from(to, base)
    if source.share != "none" and target.share == source.share:
        target = target.replace(share="none")
    return target


def size_target(to: str, source: ModelConfig, method: str | None, choices: dict[str, str | None] | None) -> ModelConfig:
    """``--to 350M``: the target of about that many parameters (:func:`transformer_grow.model.sizing.target_for_size`)
    that the depth and width methods (given, or the defaults stack and clone) can grow to: whole multiples of
    the depth for stack-like methods, of the width for clone."""
    chosen = resolve_choices(method, dict(choices or {}))
    depth, width = chosen.get("depth") or DEFAULTS["depth"], chosen.get("width") or DEFAULTS["width"]
    return target_for_size(source, to, what="--to", whole_depth=depth in WHOLE_FACTOR_METHODS,
                           whole_width=width == "clone")


def _target_from(to: str, source: ModelConfig) -> ModelConfig:
    if to in PRESETS:
        return target_config(source, to)
    require(
        Path(to).suffix.lower() in (".json", ".yaml", ".yml") or Path(to).is_file(),
        f"--to {to!r} is neither a preset ({', '.join(PRESETS)}), a size (e.g. 350M, 1.2e8) nor a YAML/JSON file",
    )
    file = load_config_file(to)
    base = target_config(source, file["preset"]) if file["preset"] else source
    return base.replace(**file["model"])


def probe_batch(ckpt: Checkpoint) -> tuple[torch.Tensor | None, str]:
    """``[n, seq_len + 1]`` validation windows of the checkpoint's data at the model's full seq_len (the
    certificate covers every position), or ``None`` (seeded random, also full length) when it has none."""
    data_config = ckpt.train_state.get("data_config")
    if not data_config:
        return None, "seeded random tokens (the checkpoint has no data config)"
    from transformer_grow.data import DataConfig, prepare_data

    try:
        data = prepare_data(DataConfig(**data_config), progress=False)
        seq = ckpt.model_config.seq_len
        windows = data.val_windows(seq_len=seq, n_windows=PROBE_WINDOWS)
    except (ConfigError, OSError) as e:
        return None, f"seeded random tokens (the checkpoint's data could not be read: {e})"
    return windows, f"{PROBE_WINDOWS} validation windows of the checkpoint's data (length {seq})"


def grown_train_state(state: dict, result, rewarmup_steps: int) -> dict:
    """The train state carried over: step, tokens, FLOPs, configs and RNG kept; re-warmup and a growth
    record added; the last evaluation no longer describes this model."""
    state = copy.deepcopy(state)
    step = int(state.get("step", 0))
    if rewarmup_steps:
        state.setdefault("schedule", {})["rewarmup"] = {"grow_step": step, "steps": rewarmup_steps}
    state["evaluated_at"] = None
    report = result.report
    history = state.setdefault("extra", {}).setdefault("growth_history", [])
    history.append(
        {
            "step": step,
            "tokens": state.get("tokens"),
            "method": report.method,
            "kind": report.kind,
            "max_abs_dlogits": report.max_abs_dlogits,
            "dloss": report.dloss,
            "old_params": report.old_params,
            "new_params": report.new_params,
        }
    )
    return state


def refuse_existing_checkpoint(out: Path, given: str) -> None:
    """One line if ``--out`` already holds a checkpoint: a grown or converted model never overwrites one."""
    try:
        resolve_checkpoint_dir(out)
    except ConfigError:
        return
    raise ConfigError(f"--out {given!r} already holds a checkpoint; choose another directory")


def run(args: argparse.Namespace) -> int:
    choice("--optimizer", args.optimizer, ("carry", "fresh"))
    require(0 <= args.rewarmup_steps <= 10**12, f"--rewarmup-steps={args.rewarmup_steps} must be from 0 to 1e12")
    require(math.isfinite(args.noise_std) and 0 <= args.noise_std <= 1,
            f"--noise-std={args.noise_std} is not allowed; it must be a number from 0 to 1")
    require(0 <= args.seed < 2**63, f"--seed={args.seed} is not allowed; it must be from 0 to 2**63 - 1")
    out = Path(args.out)
    check_directory_path(out, "--out")
    if args.hf is not None:  # a Hugging Face model in, a Hugging Face model out (cli/hf.py)
        require(args.checkpoint is None, "give CHECKPOINT_DIR or --hf PATH, not both")
        from transformer_grow.cli.hf import grow_hf_dir

        return grow_hf_dir(args)
    require(args.checkpoint is not None, "give CHECKPOINT_DIR (a checkpoint or run directory) or --hf PATH")
    refuse_existing_checkpoint(out, args.out)
    ckpt = load_checkpoint(args.checkpoint)
    options, choices = operator_arguments(args)
    target = resolve_target(args.to, ckpt.model_config, args.method, choices)
    plan(
        ckpt.model_config,
        target,
        args.method,
        noise=args.noise,
        noise_std=args.noise_std,
        **choices,
        **options,
    )  # every refusal happens here, before data or models are touched

    check_training_memory(target, TrainConfig(batch_size=1, max_steps=1, device="cpu"))
    model = model_from_checkpoint(ckpt)
    probe, probe_source = probe_batch(ckpt)
    result = grow(
        model,
        target,
        args.method,
        noise=args.noise,
        noise_std=args.noise_std,
        seed=args.seed,
        probe=probe,
        **choices,
        **options,
    )
    optimizer_state = None
    if args.optimizer == "carry" and ckpt.optimizer_state:
        optimizer_state = grow_optimizer_state(ckpt.optimizer_state, result.param_map)
    grown = Checkpoint(
        model_config=result.model.config,
        block_keys=result.model.block_keys,
        model_state={k: v.detach().to("cpu") for k, v in result.model.state_dict().items()},
        optimizer_state=optimizer_state,
        train_state=grown_train_state(ckpt.train_state, result, args.rewarmup_steps),
    )
    save_checkpoint(out / CHECKPOINT_DIRNAME, grown)
    report = result.report.to_dict()
    report.update(
        source_checkpoint=str(args.checkpoint),
        probe_source=probe_source,
        optimizer=args.optimizer,
        rewarmup_steps=args.rewarmup_steps,
        step=grown.train_state.get("step"),
    )
    atomic_write_json(out / REPORT_FILE, report)

    print(result.report.summary())
    for step in result.report.steps:
        print(f"  - {step.method} ({step.kind})" + "".join(f"; {n}" for n in step.notes))
    for note in result.report.notes:
        print(f"  note: {note}")
    print(f"probe: {probe_source}", file=sys.stderr)
    print(
        f"wrote {out / CHECKPOINT_DIRNAME} and {out / REPORT_FILE}; continue with: tgrow train --resume {out}"
    )
    return 0

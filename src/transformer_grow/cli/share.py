"""`tgrow share`: convert a trained checkpoint into a cross-layer-shared model and report the cost.

    tgrow share runs/small --params 0.5 --out runs/small-shared
    tgrow share runs/small --params 0.6 --lora-rank 8 --similarity outputs --grouping contiguous --out runs/s
    tgrow train --resume runs/small-shared --max-steps 2000

The layers to share are chosen from the model (:mod:`transformer_grow.operators.share`: layer similarity,
then groups under the budget ``--params``, a fraction of the layers' parameters). The report
(parameters saved, the loss change measured on the checkpoint's validation windows before any
retraining) is printed and written to ``OUT/share_report.json``; the shared checkpoint goes to
``OUT/checkpoint`` with the train state carried and no optimizer state (the shared weights are new
values: AdamW starts afresh), so ``tgrow train --resume OUT`` retrains it. ``tgrow grow OUT --to ...``
with ``share: none`` (or the ``share_unshare`` plan) unshares it again.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from transformer_grow.cli.grow import probe_batch, refuse_existing_checkpoint
from transformer_grow.errors import require
from transformer_grow.io import atomic_write_json, check_directory_path
from transformer_grow.model.sharing import SHARE_PARTS
from transformer_grow.operators.share import GROUPINGS, SIMILARITIES, convert
from transformer_grow.train.checkpoint import (
    CHECKPOINT_DIRNAME,
    Checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

REPORT_FILE = "share_report.json"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "share",
        help="convert a checkpoint to a cross-layer-shared model under a parameter budget",
        description="Share the layers of CHECKPOINT_DIR's model (groups chosen from layer similarity, shared "
        "weights averaged, optional per-layer LoRA deltas from a truncated SVD); print the parameters saved and "
        "the loss change before retraining, and write a resumable checkpoint to --out.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT_DIR", help="a checkpoint or run directory")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help=f"run directory for the shared checkpoint ({CHECKPOINT_DIRNAME}/) and {REPORT_FILE}")
    parser.add_argument("--params", type=float, default=0.5,
                        help="fraction of the layers' (blocks') parameters to keep, in (0, 1) (default 0.5)")
    parser.add_argument("--n-groups", type=int, default=None, metavar="M",
                        help="share exactly M stored blocks instead of fitting --params")
    parser.add_argument("--parts", default="block", help=f"what layers share: {', '.join(SHARE_PARTS)}")
    parser.add_argument("--share-norms", action="store_true",
                        help="share (average) the norms too; default: per-layer norms (exact at full LoRA rank)")
    parser.add_argument("--lora-rank", type=int, default=0,
                        help="rank of each layer's LoRA delta from its group's weights (relaxed sharing); 0: none")
    parser.add_argument("--similarity", default="weights", help=f"layer similarity: {', '.join(SIMILARITIES)}")
    parser.add_argument("--grouping", default="greedy", help=f"group choice: {', '.join(GROUPINGS)}")
    parser.set_defaults(func=run)
    return parser


def shared_train_state(state: dict, report) -> dict:
    """The train state carried over (step, tokens, FLOPs, configs, RNG); the last evaluation no longer
    describes this model; a record of the conversion added."""
    state = copy.deepcopy(state)
    state["evaluated_at"] = None
    history = state.setdefault("extra", {}).setdefault("share_history", [])
    history.append({"step": state.get("step"), "groups": report.groups, "parts": report.parts,
                    "lora_rank": report.lora_rank, "blocks_before": report.blocks_before,
                    "blocks_after": report.blocks_after, "dloss": report.dloss})
    return state


def run(args: argparse.Namespace) -> int:
    require(args.n_groups is not None or 0 < args.params < 1,
            f"--params={args.params} is not allowed; it must lie strictly between 0 and 1")
    out = Path(args.out)
    check_directory_path(out, "--out")
    refuse_existing_checkpoint(out, args.out)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt)
    probe, probe_source = probe_batch(ckpt)
    result = convert(model, args.params, n_groups=args.n_groups, parts=args.parts, share_norms=args.share_norms,
                     lora_rank=args.lora_rank, similarity=args.similarity, grouping=args.grouping, probe=probe)
    shared = result.model
    save_checkpoint(out / CHECKPOINT_DIRNAME, Checkpoint(
        model_config=shared.config,
        block_keys=shared.block_keys,
        model_state={k: v.detach().to("cpu") for k, v in shared.state_dict().items()},
        optimizer_state=None,
        train_state=shared_train_state(ckpt.train_state, result.report),
    ))
    report = result.report.to_dict()
    report.update(source_checkpoint=str(args.checkpoint), probe_source=probe_source,
                  model_config=shared.config.to_dict())
    atomic_write_json(out / REPORT_FILE, report)
    print(result.report.summary())
    for note in result.report.notes:
        print(f"  note: {note}")
    print(f"probe: {probe_source}", file=sys.stderr)
    print(f"wrote {out / CHECKPOINT_DIRNAME} and {out / REPORT_FILE}; retrain with: tgrow train --resume {out}")
    return 0

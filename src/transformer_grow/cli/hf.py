"""`tgrow hf`: Hugging Face models. `tgrow hf check PATH` prints, per operator, what is exact for it.

    tgrow hf check ./my-llama                       # every operator, measured on a probe
    tgrow grow --hf ./my-llama --to 1.3B --method stack --out ./my-llama-grown
    tgrow grow --hf ./gpt2-small --to bigger.yaml --depth insert_zero --out ./gpt2-grown
    tgrow hf export runs/cmp/runs/seed0/g_stack --out ./llama-grown   # a run of an HF target, as save_pretrained

``check`` grows the model by each operator one small step (one more block, twice the FFN, ...),
exports the result to the model's family and prints the declared kind and the measured max |dlogits|
of the source HF model against the grown HF model (fp32), or why the family cannot hold the result.
``grow --hf`` (:func:`grow_hf_dir`) writes ``save_pretrained`` safetensors and ``growth_record.json``.
Nothing is downloaded: PATH is a local ``save_pretrained`` directory, checked before a weight is read
(:func:`transformer_grow.hf.load.inspect_hf`: safetensors only, every tensor against the family's key map),
and a target whose estimated memory exceeds this machine's RAM is refused before anything is built.
An HF directory holds no optimizer state; :func:`transformer_grow.hf.grow_hf` (``optimizer_state=``)
carries AdamW moments in Python.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformer_grow.errors import ConfigError, require
from transformer_grow.io import atomic_write_json, check_directory_path

# Peak memory of growing an HF model, in model copies: the source twice (the HF model and our GPT) and
# the target three times (our grown GPT, the grown HF model, its reload after saving), plus three fp32
# logits of the probe (source, ours, grown). A lower bound.
SOURCE_COPIES, TARGET_COPIES, PROBE_LOGITS = 2, 3, 3


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "hf",
        help="Hugging Face models: check which growth operators are exact for one",
        description="Work with Hugging Face transformers models (GPT-2, Llama, Mistral, Qwen2, Mixtral, "
        "Qwen2-MoE). Growing one is `tgrow grow --hf PATH`.",
    )
    actions = parser.add_subparsers(dest="hf_command", metavar="ACTION")
    actions.required = True
    check = actions.add_parser(
        "check",
        help="measure every growth operator on a model: declared kind and max |dlogits|",
        description="Grow the model by every operator (a small step each), export to its family and print "
        "the declared kind and the measured max |dlogits| (HF source vs grown HF model, fp32).",
    )
    check.add_argument("path", metavar="PATH", help="a local Hugging Face model directory (save_pretrained)")
    check.add_argument("--seq-len", type=int, default=None, metavar="N",
                       help="RoPE models: the probe length (default max_position_embeddings, at most 2048)")
    check.add_argument("--seed", type=int, default=0, help="seed of fresh initialisation and noise")
    check.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON")
    check.set_defaults(func=run_check)
    export = actions.add_parser(
        "export", help="write a run's model as save_pretrained output (loadable by AutoModelForCausalLM)",
        description="Export the checkpointed model of a run (tgrow train/compare/GrowthManager) to its Hugging Face "
        "family, reload it with AutoModelForCausalLM and record in export_record.json that its logits equal ours.")
    export.add_argument("run", metavar="RUN", help="a run or checkpoint directory")
    export.add_argument("--out", required=True, metavar="DIR", help="an empty or new output directory")
    export.add_argument("--family", default=None, help="the family for a run that records none (our own models): "
                        "gpt2, llama, mistral, qwen2, mixtral or qwen2_moe")
    export.set_defaults(func=run_export)
    return parser


def run_export(args: argparse.Namespace) -> int:
    from transformer_grow.run.hf_run import EXPORT_RECORD, export_run

    record = export_run(args.run, args.out, family=args.family)
    print(f"wrote {args.out} ({record['hf_class']}, step {record['step']}): max|dlogits| against the run's model "
          f"{record['max_abs_dlogits']:.3g}; record in {args.out}/{EXPORT_RECORD}")
    return 0


def check_hf_memory(directory, targets: list, what: str, advice: str) -> None:
    """Refuse, before anything is built or loaded, growth whose estimated peak memory (the source's
    weight bytes and the largest target's parameters at the source's dtype, :data:`TARGET_COPIES`
    copies) exceeds this machine's RAM (the HF path runs on the CPU)."""
    from transformer_grow.operators.report import DEFAULT_PROBE_BATCH
    from transformer_grow.train.memory import FP32, check_memory, estimate_parameters

    largest = max(estimate_parameters(t) for t in targets)
    logits = max(FP32 * DEFAULT_PROBE_BATCH * t.seq_len * t.vocab_size for t in targets)
    estimate = (SOURCE_COPIES * directory.weight_bytes + TARGET_COPIES * largest * directory.bytes_per_param
                + PROBE_LOGITS * logits)
    check_memory(estimate, f"{what.format(n=f'{largest:,}')} from {directory.hf_class} {str(directory.path)!r}",
                 "cpu", advice)


def _probe_targets(config) -> list:
    from transformer_grow.hf.check import operator_probes

    targets = [config]
    for _, target, _ in operator_probes(config):
        try:
            targets.append(config.replace(**target))
        except ConfigError:  # refused later, row by row
            pass
    return targets


def run_check(args: argparse.Namespace) -> int:
    require(args.seq_len is None or args.seq_len > 0, f"--seq-len={args.seq_len} must be a positive integer")
    require(0 <= args.seed < 2**63, f"--seed={args.seed} is not allowed; it must be from 0 to 2**63 - 1")
    if args.json is not None:  # refused now, not after every operator has run
        require("\x00" not in args.json, f"--json {args.json!r} contains a NUL character")
        require(not Path(args.json).is_dir(), f"--json {args.json!r} is a directory; give a file name")
        check_directory_path(Path(args.json).absolute().parent, f"--json {args.json!r}: its folder")
    from transformer_grow.hf.check import check_operators
    from transformer_grow.hf.load import inspect_hf, load_hf

    directory = inspect_hf(args.path, args.seq_len)  # every refusal before a weight is read
    check_hf_memory(directory, _probe_targets(directory.config), "checking every operator (up to {n} parameters)",
                    "check it on a machine with more memory")
    model = load_hf(directory)
    checks = check_operators(model, seq_len=args.seq_len, seed=args.seed)
    print(f"{type(model).__name__} at {args.path}: operator, declared kind, measured HF -> HF preservation")
    for check in checks:
        print("  " + check.line())
    if args.json:
        atomic_write_json(args.json, {"path": str(args.path), "model": type(model).__name__,
                                      "operators": [vars(c) for c in checks]})
    failed = [c.operator for c in checks if c.failed]
    if failed:
        print(f"tgrow hf check: {len(failed)} operator(s) measured nothing finite: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


def grow_hf_dir(args: argparse.Namespace) -> int:
    """`tgrow grow --hf PATH --to ... --out DIR`: the arguments of `tgrow grow` (cli/grow.py)."""
    from transformer_grow.cli.grow import operator_arguments, resolve_target
    from transformer_grow.hf.grow import RECORD_FILE, grow_hf, save_grown
    from transformer_grow.hf.load import inspect_hf, load_hf
    from transformer_grow.operators.composite import plan

    out = Path(args.out)
    require(not out.exists() or not any(out.iterdir()), f"--out {args.out!r} is not empty; choose another directory")
    require(args.hf_seq_len is None or args.hf_seq_len > 0, f"--hf-seq-len={args.hf_seq_len} must be positive")
    require(args.to is not None, "--hf needs --to: a size (e.g. 350M), a preset or a YAML/JSON file")
    directory = inspect_hf(args.hf, args.hf_seq_len)  # every refusal before a weight is read
    source = directory.config
    target = resolve_target(args.to, source, args.method, operator_arguments(args)[1])  # a size: what the methods reach
    check_hf_memory(directory, [target], "growing to {n} parameters", "choose a smaller --to")
    options, choices = operator_arguments(args)
    plan(source, target, args.method, noise=args.noise, noise_std=args.noise_std, **choices, **options)  # refusals
    model = load_hf(directory)  # the weights are read only once everything else is known to be fine
    growth = grow_hf(model, target, args.method, seq_len=args.hf_seq_len, noise=args.noise,
                     noise_std=args.noise_std, seed=args.seed, source=str(args.hf), **choices, **options)
    record = save_grown(growth, out)
    p = record["preservation"]
    print(growth.result.report.summary())
    for step in growth.result.report.steps:
        print(f"  - {step.method} ({step.kind})" + "".join(f"; {n}" for n in step.notes))
    print(f"{record['source_class']} -> {record['grown_class']}: {p['kind']}; HF max|dlogits|="
          f"{p['max_abs_dlogits']:.3g} dloss={p['dloss']:+.4g} (conversion {p['conversion_max_abs_dlogits']:.2g}, "
          f"export {p['export_max_abs_dlogits']:.2g}, reload {record['reload_max_abs_dlogits']:.2g})")
    print(f"wrote {out} (save_pretrained) and {out / RECORD_FILE}")
    return 0

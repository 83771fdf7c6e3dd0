"""Grow a Hugging Face Llama by every operator: time and peak memory against a state-dict copy, and
the measured preservation (HF source vs grown HF model).

The model is a ``LlamaForCausalLM`` with random weights built from a config (nothing is downloaded):
``--size 100m`` is Llama-shaped at ~125M parameters (12 layers, hidden 768, 12 heads, 4 kv heads,
SwiGLU 2048, vocabulary 32000, untied); ``--size tiny`` (2 layers, hidden 64) checks that the script
works in seconds. Operators are the small steps of ``tgrow hf check``
(:func:`transformer_grow.hf.check.operator_probes`: one block more, twice the FFN, one kv group of
heads more, ...). For each operator, in a fresh subprocess (peaks do not mix):

- ``in``, ``grow``, ``out``: wall seconds of ``from_hf`` (HF -> our GPT), ``grow(..., measure=False)``
  and ``to_hf`` (grown GPT -> HF), medians over ``--repeats`` runs after a first (memory) run; ``x copy``
  is their sum over ``{k: v.clone() for k, v in model.state_dict().items()}`` of the HF model timed in
  alternation with them (1.0: the whole conversion-growth-export chain costs one copy of the weights);
- ``peak/(old+new)``: the peak resident set above the interpreter's footprint during the first chain,
  against the HF source plus the grown HF model (1.0: nothing else is held; Linux only);
- ``max|dlogits|``: from ``grow_hf`` on a seeded random probe of ``--seq-len`` tokens, fp32.

Run: ``PYTHONPATH=src python benchmarks/hf_grow.py --size tiny`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import transformers

from transformer_grow.hf import from_hf, grow_hf, to_hf
from transformer_grow.hf.check import operator_probes
from transformer_grow.operators import grow

SIZES = {
    "100m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                 intermediate_size=2048, vocab_size=32000, max_position_embeddings=2048),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=256, max_position_embeddings=64),
}


def _status(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _nbytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def build(size: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**SIZES[size])).eval()


def measure_one(size: str, operator: str, repeats: int, seq_len: int) -> dict:
    """Run one operator on a fresh model in this process."""
    rss_process = _status("VmRSS")
    model = build(size)
    probes = {name: (target, options) for name, target, options in operator_probes(from_hf(model, seq_len)[0].config)}
    target, options = probes[operator]

    def chain():
        t0 = time.perf_counter()
        gpt, info = from_hf(model, seq_len)
        t1 = time.perf_counter()
        result = grow(gpt, target, measure=False, **options)
        t2 = time.perf_counter()
        grown = to_hf(result.model, info)
        t3 = time.perf_counter()
        return grown, (t1 - t0, t2 - t1, t3 - t2)

    gc.collect()
    _reset_peak()
    grown, _ = chain()
    peak = _status("VmHWM")
    old_bytes, new_bytes = _nbytes(model), _nbytes(grown)
    del grown
    times, copies = [], []
    for _ in range(repeats):  # chain and plain copy in alternation: load from other processes hits both
        gc.collect()
        grown, parts = chain()
        times.append(parts)
        del grown
        gc.collect()
        start = time.perf_counter()
        copy = {k: v.clone() for k, v in model.state_dict().items()}
        copies.append(time.perf_counter() - start)
        del copy
    growth = grow_hf(model, target, seq_len=seq_len, exact_tol=None, **options)
    p = growth.record["preservation"]
    return {
        "operator": operator,
        "kind": p["kind"],
        "max_abs_dlogits": p["max_abs_dlogits"],
        "in": statistics.median(t[0] for t in times),
        "grow": statistics.median(t[1] for t in times),
        "out": statistics.median(t[2] for t in times),
        "x_copy": statistics.median(sum(t) / c for t, c in zip(times, copies)),
        "copy": statistics.median(copies),
        "peak_models": (peak - rss_process) / (old_bytes + new_bytes) if peak else None,
        "old_bytes": old_bytes,
        "new_bytes": new_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="100m", help="model size (tiny: a smoke check)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per operator (median)")
    parser.add_argument("--seq-len", type=int, default=None, help="probe length (default: 256, tiny: 64)")
    parser.add_argument("--only", nargs="*", default=None, help="operators to run (default: all)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args(argv)
    seq_len = args.seq_len or (64 if args.size == "tiny" else 256)
    if args.one:
        print(json.dumps(measure_one(args.size, args.one, args.repeats, seq_len)))
        return 0
    model = build(args.size)
    names = [name for name, _, _ in operator_probes(from_hf(model, seq_len)[0].config)]
    names = [n for n in names if args.only is None or n in args.only]
    n_params = sum(p.numel() for p in model.parameters())
    del model
    print(f"LlamaForCausalLM {SIZES[args.size]} = {n_params / 1e6:.1f}M parameters, fp32, CPU, torch "
          f"{torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}, repeats {args.repeats}, probe length {seq_len}")
    columns = ("operator", "kind", "new/old", "in s", "grow s", "out s", "x copy", "peak/(old+new)", "max|dlogits|")
    widths = (18, 12, 7, 7, 7, 7, 7, 14, 12)
    row = " ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(row.format(*columns))
    print("-" * (sum(widths) + len(widths) - 1))
    for name in names:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--size", args.size, "--repeats",
                              str(args.repeats), "--seq-len", str(seq_len)], capture_output=True, text=True)
        if out.returncode:
            print(f"{name:<18} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(row.format(
            r["operator"], r["kind"], f"{r['new_bytes'] / r['old_bytes']:.2f}", f"{r['in']:.3f}", f"{r['grow']:.3f}",
            f"{r['out']:.3f}", f"{r['x_copy']:.2f}", "-" if r["peak_models"] is None else f"{r['peak_models']:.2f}",
            f"{r['max_abs_dlogits']:.2e}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

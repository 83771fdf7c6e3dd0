"""Time and peak memory of every growth operator against a plain copy of the model's state dict.

Growth should be O(parameters): each operator builds the new model once (no initialise-then-
overwrite of everything), keeps at most the old model, the new model and one temporary the size of
the largest tensor, and its map costs O(sum of tensor dimensions). This benchmark measures it on a
~100M-parameter model (CPU, fp32):

- time: wall seconds of the operator (``measure=False``; the probe forward passes are timed
  separately, column ``+probe``), run ``--repeats`` times after the first (memory) run, each time
  followed by ``{k: v.clone() for k, v in model.state_dict().items()}`` in the same process; column
  ``x copy`` is the median of operator / copy over these pairs (load from other processes on a
  shared machine hits both). The copy writes the *old* model's bytes, so ``x copy/B`` also divides
  by new/old bytes;
- memory: the rise of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)
  during the first run, divided by the size of the new model (1.0 = nothing but the new model), and
  the peak above the interpreter's own footprint against old + new model (1.0 = nothing else).

Each operator runs in a fresh subprocess so peaks do not mix. Run:
``PYTHONPATH=src python benchmarks/grow_ops.py`` (``--help`` for options; Linux only for memory).
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

from transformer_grow import operators as G
from transformer_grow.model import GPT, ModelConfig

CONFIG = {
    "n_layer": 12,
    "d_model": 768,
    "n_head": 12,
    "vocab_size": 16384,
    "seq_len": 1024,
    "norm": "rmsnorm",
    "mlp": "swiglu",
    "pos": "rope",
    "tie_embeddings": True,
}

OPERATORS = {
    "copy_state_dict": lambda m, **kw: {k: v.clone() for k, v in m.state_dict().items()},
    "stack_x2": lambda m, **kw: G.stack(m, 2, **kw),
    "repeat_x2": lambda m, **kw: G.repeat(m, 2, **kw),
    "interleave_x2": lambda m, **kw: G.interleave(m, 2, **kw),
    "layer_map_solar": lambda m, **kw: G.layer_map(m, list(range(8)) + list(range(4, 12)), **kw),
    "insert_zero_4": lambda m, **kw: G.insert_zero(m, n_new=4, **kw),
    "insert_random_4": lambda m, **kw: G.insert_random(m, n_new=4, **kw),
    "clone_x2": lambda m, **kw: G.clone(m, 2, **kw),
    "clone_x2_cancel": lambda m, **kw: G.clone(m, 2, noise="cancel", **kw),
    "net2net_1024": lambda m, **kw: G.net2net(m, 1024, **kw),
    "zero_pad_1024": lambda m, **kw: G.zero_pad(m, 1024, **kw),
    "random_pad_1024": lambda m, **kw: G.random_pad(m, 1024, **kw),
    "heads_16": lambda m, **kw: G.add_heads(m, 16, **kw),
    "ffn_zero_3072": lambda m, **kw: G.grow_ffn(m, 3072, "zero", **kw),
    "ffn_split_3072": lambda m, **kw: G.grow_ffn(m, 3072, "split", **kw),
    "seq_2048": lambda m, **kw: G.grow_seq(m, 2048, **kw),
    "upcycle_4": lambda m, **kw: G.upcycle(m, 4, 2, **kw),
    "grow_depth2_width2": lambda m, **kw: G.grow(
        m, m.config.replace(n_layer=24, d_model=1536, n_head=24, n_kv_head=24, d_ff=4096), **kw
    ),
}


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _nbytes(obj) -> int:
    tensors = obj.values() if isinstance(obj, dict) else obj.model.parameters()
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_one(name: str, repeats: int) -> dict:
    """Run operator ``name`` on a fresh ~100M model in this process; returns timings and memory.

    The first run gives the memory peak (a later run could reuse memory freed by an earlier one);
    the following ``repeats`` runs give the time, so that first-call costs of torch are not counted.
    """
    rss_process = _status("VmRSS")  # interpreter and torch, before any model exists
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CONFIG)).eval()
    old_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    op = OPERATORS[name]
    kwargs = {} if name == "copy_state_dict" else {"measure": False}
    gc.collect()
    rss_before = _status("VmRSS")
    _reset_peak()
    result = op(model, **kwargs)
    peak = _status("VmHWM")
    new_bytes = _nbytes(result)
    del result
    times, copy_times = [], []
    for _ in range(repeats):  # operator and plain copy in alternation: load from other processes hits both
        for timed, record in (
            (lambda: op(model, **kwargs), times),
            (lambda: OPERATORS["copy_state_dict"](model), copy_times),
        ):
            gc.collect()
            start = time.perf_counter()
            result = timed()
            record.append(time.perf_counter() - start)
            del result
    probe_seconds, kind, dlogits = None, "-", None
    if name != "copy_state_dict":
        gc.collect()
        start = time.perf_counter()
        report = op(model).report
        probe_seconds = time.perf_counter() - start - statistics.median(times)
        kind, dlogits = report.kind, report.max_abs_dlogits
    return {
        "name": name,
        "seconds": statistics.median(times),
        "copy_seconds": statistics.median(copy_times),
        "ratio": statistics.median(t / c for t, c in zip(times, copy_times)),
        "peak_rise": peak - rss_before,
        "peak_models": peak - rss_process,
        "old_bytes": old_bytes,
        "new_bytes": new_bytes,
        "probe_seconds": probe_seconds,
        "kind": kind,
        "max_abs_dlogits": dlogits,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per operator (median)")
    parser.add_argument("--only", nargs="*", default=None, help="operators to run (default: all)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.repeats)))
        return 0

    names = ["copy_state_dict"] + [n for n in (args.only or OPERATORS) if n != "copy_state_dict"]
    n_params = sum(p.numel() for p in GPT(ModelConfig(**CONFIG)).parameters())
    print(
        f"model: {CONFIG} = {n_params / 1e6:.1f}M parameters, fp32, CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, repeats {args.repeats}"
    )
    rows = []
    for name in names:
        out = subprocess.run(
            [sys.executable, __file__, "--one", name, "--repeats", str(args.repeats)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    mib = 2**20
    print(
        f"plain copy of the state dict: {base['seconds']:.3f} s, peak rise {base['peak_rise'] / mib:.0f} MiB "
        f"(old model {base['old_bytes'] / mib:.0f} MiB)"
    )
    columns = (
        "operator",
        "kind",
        "new/old",
        "seconds",
        "x copy",
        "x copy/B",
        "+probe",
        "peak rise/new",
        "peak/(old+new)",
        "max|dlogits|",
    )
    widths = (20, 12, 7, 8, 7, 8, 7, 13, 14, 12)
    header = " ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(columns, widths)))
    print(header)
    print("-" * len(header))
    for r in rows[1:]:
        growth = r["new_bytes"] / r["old_bytes"]
        ratio = r["ratio"]
        cells = (
            r["name"],
            r["kind"],
            f"{growth:.2f}",
            f"{r['seconds']:.3f}",
            f"{ratio:.2f}",
            f"{ratio / growth:.2f}",
            f"{r['probe_seconds']:.2f}",
            f"{r['peak_rise'] / r['new_bytes']:.2f}",
            f"{r['peak_models'] / (r['old_bytes'] + r['new_bytes']):.2f}",
            "-" if r["max_abs_dlogits"] is None else f"{r['max_abs_dlogits']:.2e}",
        )
        print(" ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput and model-FLOP utilisation (MFU) of our GPT, side by side with Hugging Face GPT-2.

One *training step* is forward + backward + AdamW step on a fixed random batch. We time our model
configured GPT-2-style (LayerNorm, learned positions, GELU 4x MLP, biases, tied embeddings) against
``transformers.GPT2LMHeadModel`` of the same shape and batch, and our default Llama-style config
(RMSNorm, RoPE, SwiGLU, no biases). Models are timed in alternation (A B C A B C ...) after a
warm-up, and the median over rounds is reported, so that load from other processes on a shared
machine hits all models alike. A round counts only when this process got at least ``min_cpu_share``
of its threads' CPU time in every run of the round (``time.process_time`` / wall / threads); rounds
disturbed by other processes are printed but discarded, and timing goes on until ``rounds`` clean
rounds are collected or ``max_rounds`` were run. The load average is printed too.

On a machine too busy for clean rounds, run with ``--threads 1``: the column ``tok/cpu-s``
(tokens per second of this process's CPU time, over all rounds) then estimates the uncontended
single-thread rate, since time-slicing by other processes does not count as our CPU time (with more
threads it does not: OpenMP threads spin while waiting for a descheduled sibling).

MFU = flops_per_token * tokens/s / peak, with flops_per_token from :meth:`GPT.flops_per_token`
(Kaplan et al. 2020, Table 1: 6N + head + attention) and *peak* the fp32 matmul rate measured in the
same run (best of several large square ``torch.mm``), not a datasheet number.

Run: ``PYTHONPATH=src python benchmarks/throughput.py`` (``--help`` for options). Needs
``pip install transformers`` for the Hugging Face baseline (``--no-hf`` skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

import transformer_grow.model.gpt as gpt_module
from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.io import atomic_write_json
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.optim import build_optimizer

# "ours-gpt2-unfused" is an ablation: our GPT-2-style model without the fused head + loss.
# "ours-llama-bf16": our default model under CPU bf16 autocast (TrainConfig(dtype="bf16")); its MFU is
# still reported against the fp32 matmul peak.
MODELS = ("ours-gpt2", "hf-gpt2", "ours-llama", "ours-gpt2-unfused", "ours-llama-bf16")
DEFAULT_MODELS = ("ours-gpt2", "hf-gpt2", "ours-llama")
OPTIMIZERS = ("trainer", "foreach")


@dataclass
class BenchSettings:
    """Model shape, batch, environment and timing protocol of one benchmark run."""

    n_layer: int = 4
    d_model: int = 384
    n_head: int = 6
    vocab_size: int = 8192
    seq_len: int = 256
    batch_size: int = 8
    warmup_steps: int = 3
    steps_per_run: int = 3
    rounds: int = 5  # clean rounds wanted
    max_rounds: int = 15  # give up collecting clean rounds after this many
    min_cpu_share: float = 0.9
    threads: int = 0  # 0: keep torch's default
    compile: bool = False
    optimizer: str = "trainer"  # the trainer's build_optimizer (fused on CPU), or the same AdamW with foreach=True
    malloc_tuning: bool = False  # glibc: keep freed big buffers for reuse instead of unmapping them
    models: tuple[str, ...] = DEFAULT_MODELS
    peak_size: int = 2048
    seed: int = 0

    def validate(self) -> None:
        for name in ("n_layer", "d_model", "n_head", "vocab_size", "seq_len", "batch_size",
                     "steps_per_run", "rounds", "max_rounds", "peak_size"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"{name}={value!r} must be an integer >= 1")
        require(self.warmup_steps >= 1, f"warmup_steps={self.warmup_steps} must be >= 1 (the first step "
                                        "allocates optimizer state and, with --compile, compiles)")
        require(self.max_rounds >= self.rounds, f"max_rounds={self.max_rounds} must be >= rounds={self.rounds}")
        require(0.0 <= self.min_cpu_share <= 1.0, f"min_cpu_share={self.min_cpu_share} must lie in [0, 1]")
        require(self.threads >= 0, f"threads={self.threads} must be >= 0 (0 keeps torch's default)")
        require(self.d_model % self.n_head == 0, f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        choice("optimizer", self.optimizer, OPTIMIZERS)
        require(len(self.models) > 0, "no models selected")
        for name in self.models:
            require(name in MODELS, f"model {name!r} is not known; choose from {', '.join(MODELS)}")
        require(not self.malloc_tuning or platform.system() == "Linux",
                "--malloc-tuning needs Linux with glibc (it calls mallopt)")


# ----------------------------------------------------------------------------- models
def gpt2_style_config(s: BenchSettings) -> ModelConfig:
    """Our model configured like GPT-2: LayerNorm, learned positions, GELU 4x MLP, biases, tied head."""
    return ModelConfig(n_layer=s.n_layer, d_model=s.d_model, n_head=s.n_head, vocab_size=s.vocab_size,
                       seq_len=s.seq_len, norm="layernorm", pos="learned", mlp="gelu", bias=True,
                       tie_embeddings=True)


def llama_style_config(s: BenchSettings) -> ModelConfig:
    """Our default config (RMSNorm, RoPE, SwiGLU, no biases, tied head) at the same shape."""
    return ModelConfig(n_layer=s.n_layer, d_model=s.d_model, n_head=s.n_head, vocab_size=s.vocab_size,
                       seq_len=s.seq_len)


def build_hf_gpt2(s: BenchSettings) -> nn.Module:
    """``transformers.GPT2LMHeadModel`` of the benchmark's shape, built from a config (no download)."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("the Hugging Face baseline needs 'transformers': pip install transformers "
                          "(or pass --no-hf)") from e
    config = GPT2Config(vocab_size=s.vocab_size, n_positions=s.seq_len, n_embd=s.d_model, n_layer=s.n_layer,
                        n_head=s.n_head, n_inner=4 * s.d_model, activation_function="gelu_new",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                        bos_token_id=0, eos_token_id=0, attn_implementation="sdpa")
    return GPT2LMHeadModel(config)


@contextlib.contextmanager
def unfused_model_code() -> Iterator[None]:
    """Run our model with ``F.linear`` + ``F.cross_entropy`` for the head and loss instead of the fused
    :class:`~transformer_grow.model.layers.LinearCrossEntropy` (the ablation ``ours-gpt2-unfused``)."""
    saved = gpt_module.fused_head_loss_applies
    gpt_module.fused_head_loss_applies = lambda hidden, weight: False
    try:
        yield
    finally:
        gpt_module.fused_head_loss_applies = saved


def make_optimizer(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    """The trainer's AdamW (default TrainConfig settings; fused on the CPU), or the same groups and
    settings with the multi-tensor ``foreach`` implementation (the ablation)."""
    optimizer = build_optimizer(model, TrainConfig(max_steps=1), torch.device("cpu"))
    if kind == "foreach":
        keep = ("params", "lr", "betas", "eps", "weight_decay")
        optimizer = torch.optim.AdamW([{k: g[k] for k in keep} for g in optimizer.param_groups], foreach=True)
    return optimizer


@dataclass
class Contender:
    """One model under test and how to run a training step on it."""

    name: str
    model: nn.Module
    flops_per_token: int
    optimizer: torch.optim.Optimizer
    step: Callable[[], float]
    tokens_per_s: list[float] = dataclasses.field(default_factory=list)
    cpu_share: list[float] = dataclasses.field(default_factory=list)
    tokens_per_cpu_s: list[float] = dataclasses.field(default_factory=list)  # per thread's CPU second x threads
    clean: list[bool] = dataclasses.field(default_factory=list)  # per round: counted or discarded
    first_step_s: float = 0.0


def make_contender(name: str, s: BenchSettings, tokens: torch.Tensor, targets: torch.Tensor) -> Contender:
    """Build model ``name``, its optimizer (same settings for all models) and a training step."""
    torch.manual_seed(s.seed)
    if name == "hf-gpt2":
        model = build_hf_gpt2(s)
        # Same shape as ours-gpt2, so the same FLOP count (the parameter counts are printed).
        flops = GPT(gpt2_style_config(s)).flops_per_token()
    else:
        model = GPT(llama_style_config(s) if name.startswith("ours-llama") else gpt2_style_config(s))
        flops = model.flops_per_token()
    model.train()
    optimizer = make_optimizer(model, s.optimizer)
    forward = torch.compile(model) if s.compile else model
    code_paths = {"ours-gpt2-unfused": unfused_model_code,  # the forward runs in this context
                  "ours-llama-bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    forward_context = code_paths.get(name, contextlib.nullcontext)

    if name == "hf-gpt2":
        # HF shifts ``labels`` inside the model, so it gets the sequence itself.
        def loss_fn() -> torch.Tensor:
            return forward(input_ids=tokens, labels=tokens).loss
    else:
        def loss_fn() -> torch.Tensor:
            return forward(tokens, targets).loss

    def step() -> float:
        with forward_context():
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return Contender(name, model, flops, optimizer, step)


# ----------------------------------------------------------------------------- environment
def tune_malloc() -> None:
    """Make glibc keep freed big blocks for reuse (``mallopt`` M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = 1 GiB).

    By default every buffer over 32 MB gets fresh ``mmap``-ed pages and gives them back when freed,
    so each training step pays page faults on all its big activations and gradients.
    """
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    if not (libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30)):
        raise ConfigError("mallopt failed; --malloc-tuning needs glibc")


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    keys = ("lr", "betas", "eps", "weight_decay", "foreach", "fused")
    groups = [{k: g.get(k) for k in keys} | {"n_params": len(g["params"])} for g in optimizer.param_groups]
    return f"{type(optimizer).__name__} {groups}"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


# ----------------------------------------------------------------------------- measurements
def measure_matmul_peak(size: int, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of ``repeats`` timings of a ``size``-square ``torch.mm`` (after one warm-up)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def timed_run(c: Contender, steps: int, tokens_per_step: int, threads: int) -> None:
    """Run ``steps`` training steps of ``c``; record tokens/s and this process's CPU share."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        c.step()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    c.tokens_per_s.append(steps * tokens_per_step / wall)
    c.cpu_share.append(cpu / (wall * threads))
    c.tokens_per_cpu_s.append(steps * tokens_per_step / (cpu / threads))


def counted(c: Contender, values: list[float]) -> list[float]:
    """``values`` of the clean rounds (all rounds when none was clean)."""
    kept = [v for v, clean in zip(values, c.clean) if clean]
    return kept or values


def run(s: BenchSettings) -> dict:
    """Warm up every selected model, then time them in alternation; print everything; return a summary."""
    s.validate()
    if s.malloc_tuning:
        tune_malloc()
    if s.threads:
        torch.set_num_threads(s.threads)
    threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(s.seed)
    tokens = torch.randint(0, s.vocab_size, (s.batch_size, s.seq_len), generator=gen)
    targets = torch.roll(tokens, -1, dims=1)
    tokens_per_step = s.batch_size * s.seq_len

    print(f"torch {torch.__version__} | python {platform.python_version()} | {platform.machine()} "
          f"| cpus {os.cpu_count()} | torch threads {threads} | dtype float32 | compile {s.compile} "
          f"| malloc tuning {s.malloc_tuning}")
    if "hf-gpt2" in s.models:
        import transformers

        print(f"transformers {transformers.__version__} (GPT2LMHeadModel, attn_implementation=sdpa, gelu_new)")
    print(f"settings: {dataclasses.asdict(s)}")
    print(f"load average before: {load_average()}")

    peaks = [measure_matmul_peak(s.peak_size)]
    contenders = {name: make_contender(name, s, tokens, targets) for name in s.models}
    print(f"tokens/step {tokens_per_step} | no grad clipping | optimizer (same for all): "
          f"{describe_optimizer(next(iter(contenders.values())).optimizer)}")
    for c in contenders.values():
        n = sum(p.numel() for p in c.model.parameters())
        start = time.perf_counter()
        c.step()
        c.first_step_s = time.perf_counter() - start
        for _ in range(s.warmup_steps - 1):
            c.step()
        print(f"  {c.name:17s} params {n:,} | flops/token {c.flops_per_token / 1e6:.1f} M "
              f"| first step {c.first_step_s:.2f} s", flush=True)
    n_clean = 0
    for r in range(s.max_rounds):
        for c in contenders.values():
            timed_run(c, s.steps_per_run, tokens_per_step, threads)
        clean = min(c.cpu_share[-1] for c in contenders.values()) >= s.min_cpu_share
        n_clean += clean
        for c in contenders.values():
            c.clean.append(clean)
        peaks.append(measure_matmul_peak(s.peak_size))
        line = " | ".join(f"{c.name} {c.tokens_per_s[-1]:5.0f} tok/s (cpu {c.cpu_share[-1]:4.0%})"
                          for c in contenders.values())
        print(f"round {r + 1:2d} {'clean' if clean else 'noisy'}: {line} | load {load_average()}", flush=True)
        if n_clean == s.rounds:
            break
    if n_clean < s.rounds:
        print(f"WARNING: only {n_clean} of {s.rounds} wanted rounds were clean (cpu share >= "
              f"{s.min_cpu_share:.0%}); the machine is busy and the numbers below are unreliable")
    return report(s, contenders, peaks, n_clean)


def report(s: BenchSettings, contenders: dict[str, Contender], peaks: list[float], n_clean: int) -> dict:
    peak = max(peaks)
    print(f"fp32 matmul peak ({s.peak_size}^2 torch.mm, best of {len(peaks)} x 5 timings): {peak / 1e9:.1f} "
          f"GFLOP/s (per-measurement best: {', '.join(f'{p / 1e9:.0f}' for p in peaks)})")
    print(f"medians over {n_clean or 'all (none clean)'} rounds")
    print(f"{'model':17s} {'median tok/s':>12s} {'min':>7s} {'max':>7s} {'GFLOP/s':>8s} {'MFU':>6s} {'cpu share':>9s} "
          f"{'tok/cpu-s':>9s} {'MFU(cpu)':>8s}")
    summary: dict = {"settings": dataclasses.asdict(s), "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "peak_flops": peak, "clean_rounds": n_clean, "models": {}, "ratios": {}}
    for c in contenders.values():
        runs = counted(c, c.tokens_per_s)
        tps = statistics.median(runs)
        flops = c.flops_per_token * tps
        print(f"{c.name:17s} {tps:12.0f} {min(runs):7.0f} {max(runs):7.0f} "
              f"{flops / 1e9:8.1f} {flops / peak:6.1%} {statistics.median(counted(c, c.cpu_share)):9.0%} "
              f"{statistics.median(c.tokens_per_cpu_s):9.0f} "
              f"{c.flops_per_token * statistics.median(c.tokens_per_cpu_s) / peak:8.1%}")
        summary["models"][c.name] = {"tokens_per_s": tps, "mfu": flops / peak, "runs": c.tokens_per_s,
                                     "tokens_per_cpu_s": c.tokens_per_cpu_s, "clean": c.clean,
                                     "first_step_s": c.first_step_s}
    if "hf-gpt2" in contenders:
        hf = contenders["hf-gpt2"]
        for c in contenders.values():
            if c is hf:
                continue
            ratio = statistics.median(counted(c, c.tokens_per_s)) / statistics.median(counted(hf, hf.tokens_per_s))
            paired = counted(c, [a / b for a, b in zip(c.tokens_per_s, hf.tokens_per_s)])
            cpu_ratio = statistics.median(c.tokens_per_cpu_s) / statistics.median(hf.tokens_per_cpu_s)
            print(f"ratio {c.name} / hf-gpt2: {ratio:.2f}x "
                  f"(median of per-round ratios {statistics.median(paired):.2f}x; by tok/cpu-s {cpu_ratio:.2f}x)")
            summary["ratios"][f"{c.name}/hf-gpt2"] = ratio
            summary["ratios"][f"{c.name}/hf-gpt2 by cpu time"] = cpu_ratio
    print(f"load average after: {load_average()}")
    return summary


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> tuple[BenchSettings, str | None]:
    d = BenchSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-layer", type=int, default=d.n_layer)
    p.add_argument("--d-model", type=int, default=d.d_model)
    p.add_argument("--n-head", type=int, default=d.n_head)
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per step")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="untimed steps per model")
    p.add_argument("--steps-per-run", type=int, default=d.steps_per_run, help="steps per timed run")
    p.add_argument("--rounds", type=int, default=d.rounds, help="clean timed runs wanted per model (alternating)")
    p.add_argument("--max-rounds", type=int, default=d.max_rounds, help="stop after this many rounds, clean or not")
    p.add_argument("--min-cpu-share", type=float, default=d.min_cpu_share,
                   help="a round is clean when every run got this share of its threads' CPU time")
    p.add_argument("--threads", type=int, default=d.threads, help="torch.set_num_threads (0: default)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model (same for all)")
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS,
                   help="trainer: the trainer's build_optimizer (AdamW, fused on CPU); foreach: same, foreach=True")
    p.add_argument("--malloc-tuning", action="store_true",
                   help="glibc mallopt: reuse freed big buffers instead of fresh mmap pages (all models)")
    p.add_argument("--models", default=",".join(d.models), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--ablation", action="store_true", help="also time ours-gpt2-unfused (plain head + cross-entropy)")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face baseline")
    p.add_argument("--peak-size", type=int, default=d.peak_size, help="matrix size of the matmul peak timing")
    p.add_argument("--json", default=None, help="also write the summary to this JSON file")
    a = p.parse_args(argv)
    models = [m for m in a.models.split(",") if m and not (a.no_hf and m == "hf-gpt2")]
    if a.ablation and "ours-gpt2-unfused" not in models:
        models.append("ours-gpt2-unfused")
    settings = BenchSettings(n_layer=a.n_layer, d_model=a.d_model, n_head=a.n_head, vocab_size=a.vocab_size,
                             seq_len=a.seq_len, batch_size=a.batch_size, warmup_steps=a.warmup_steps,
                             steps_per_run=a.steps_per_run, rounds=a.rounds, max_rounds=a.max_rounds,
                             min_cpu_share=a.min_cpu_share, threads=a.threads, compile=a.compile,
                             optimizer=a.optimizer, malloc_tuning=a.malloc_tuning, models=tuple(models),
                             peak_size=a.peak_size)
    return settings, a.json


def main(argv: list[str] | None = None) -> int:
    try:
        settings, json_path = parse_args(argv)
        settings.validate()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = run(settings)
    if json_path:
        atomic_write_json(json_path, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

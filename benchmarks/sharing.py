"""Cross-layer parameter sharing: quality at equal stored parameters, at equal compute, and after conversion.

Three comparisons on the bytes of a few stdlib modules (vocabulary 256), every model trained with the
same AdamW settings and batches, validation loss on fixed held-out windows (no timing is measured):

1. **Same stored parameters**: ``N`` layers sharing ``N / 2`` blocks by ``cycle`` (Takase & Kiyono
   2021) against an unshared ``N / 2``-layer model: the same parameters, twice the compute for the
   shared model.
2. **Same compute**: the same shared model against the unshared ``N``-layer model (equal FLOPs per
   token, half the parameters), and the growth path: the shared model trained for half the steps,
   unshared exactly (:mod:`transformer_grow.operators.unshare`), trained for the other half.
3. **Conversion to 50% of the parameters** (:func:`transformer_grow.operators.share.convert`) of the trained
   ``N``-layer model, with and without LoRA deltas: loss before conversion, right after it, and after
   ``--retrain-steps`` of retraining.

Run: ``PYTHONPATH=src python benchmarks/sharing.py --seeds 0,1,2`` (``--tiny`` checks that it runs in
seconds; ``--out FILE`` writes the JSON results). A seed sets the initialisation and the batch order (seed 0
keeps the order of the first, one-seed version); with several seeds each run's mean and the paired
differences that matter are printed with 90% Student t intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from pathlib import Path

import torch

from transformer_grow.model import GPT, ModelConfig
from transformer_grow.operators import grow
from transformer_grow.operators.share import convert

CORPUS_FILES = ("argparse.py", "textwrap.py", "dataclasses.py", "json/decoder.py", "string.py", "calendar.py")
SETTINGS = {
    "full": dict(n_layer=8, d_model=128, n_head=4, seq_len=128, steps=600, batch=16, retrain_steps=150),
    "tiny": dict(n_layer=4, d_model=32, n_head=4, seq_len=32, steps=12, batch=4, retrain_steps=4),
}
EVAL_WINDOWS = 32


def corpus() -> torch.Tensor:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join((stdlib / name).read_bytes() for name in CORPUS_FILES if (stdlib / name).is_file())
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


class Data:
    """Training windows as a pure function of the step; fixed held-out windows (the last 10%)."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch: int, seed: int = 0):
        self.tokens, self.seq_len, self.batch, self.seed = tokens, seq_len, batch, seed
        self.cut = int(0.9 * len(tokens))
        g = torch.Generator().manual_seed(12345)
        starts = torch.randint(self.cut, len(tokens) - seq_len - 1, (EVAL_WINDOWS,), generator=g)
        self.val = torch.stack([tokens[s: s + seq_len + 1] for s in starts.tolist()])

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(step + 1_000_003 * self.seed)
        starts = torch.randint(0, self.cut - self.seq_len - 1, (self.batch,), generator=g)
        w = torch.stack([self.tokens[s: s + self.seq_len + 1] for s in starts.tolist()])
        return w[:, :-1], w[:, 1:]


def train(model: GPT, data: Data, steps: int, first_step: int = 0, lr: float = 3e-3) -> GPT:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(first_step, first_step + steps):
        loss = model(*data.train_batch(step)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return model


@torch.no_grad()
def val_loss(model: GPT, data: Data) -> float:
    model.eval()
    return float(model(data.val[:, :-1], data.val[:, 1:]).loss)


def describe(name: str, model: GPT, data: Data, steps: int, **extra) -> dict:
    return {"run": name, "params_nonembedding": model.num_params(), "params_total": model.num_params(False),
            "flops_per_token": model.flops_per_token(), "train_tokens": steps * data.batch * data.seq_len,
            "val_loss": val_loss(model, data), **extra}


def run(setting: dict, seed: int = 0) -> list[dict]:
    n = setting["n_layer"]
    base = ModelConfig(n_layer=n, d_model=setting["d_model"], n_head=setting["n_head"], vocab_size=256,
                       seq_len=setting["seq_len"])
    data = Data(corpus(), setting["seq_len"], setting["batch"], seed)
    steps, rows = setting["steps"], []

    def fresh(config: ModelConfig) -> GPT:
        torch.manual_seed(seed)
        return GPT(config)

    shared_config = base.replace(share="cycle", share_groups=n // 2)
    shared = train(fresh(shared_config), data, steps)
    rows.append(describe(f"shared L={n} M={n // 2} cycle", shared, data, steps, comparison="both"))
    half = train(fresh(base.replace(n_layer=n // 2)), data, steps)
    rows.append(describe(f"unshared L={n // 2}", half, data, steps, comparison="same stored parameters"))
    full = train(fresh(base), data, steps)
    rows.append(describe(f"unshared L={n}", full, data, steps, comparison="same compute"))

    early = train(fresh(shared_config), data, steps // 2)
    grown = grow(early, {"share": "none"}, method="unshare", probe=data.val)
    unshared = train(grown.model, data, steps - steps // 2, first_step=steps // 2)
    rows.append(describe(f"shared L={n} M={n // 2} -> unshare at step {steps // 2}", unshared, data, steps,
                         comparison="same compute", unshare_max_abs_dlogits=grown.report.max_abs_dlogits))

    for rank in (0, setting["d_model"] // 8):
        result = convert(full, 0.5, lora_rank=rank, probe=data.val)
        report = result.report
        retrained = train(result.model, data, setting["retrain_steps"], first_step=steps)
        rows.append(describe(f"converted 50% lora_rank={rank}", retrained, data, steps + setting["retrain_steps"],
                             comparison="conversion", groups=report.groups, loss_trained=val_loss(full, data),
                             loss_converted=report.loss_after, saved=report.saved,
                             retrain_steps=setting["retrain_steps"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny settings: check that the benchmark runs")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    seeds = [int(v) for v in args.seeds.split(",")]
    setting = SETTINGS["tiny" if args.tiny else "full"]
    print(f"settings: {setting}, seeds {seeds}, {EVAL_WINDOWS} validation windows; no timing")
    per_seed = {}
    for seed in seeds:
        rows = run(setting, seed)
        per_seed[seed] = rows
        for row in rows:
            print(f"seed {seed} {row['run']:<44} {row['comparison']:<24} params {row['params_nonembedding']:>10,} "
                  f"FLOPs/tok {row['flops_per_token']:>12,} val loss {row['val_loss']:.4f}"
                  + (f" (trained {row['loss_trained']:.4f}, converted {row['loss_converted']:.4f})"
                     if "loss_converted" in row else ""), flush=True)
    if len(seeds) > 1:
        print(summary(per_seed))
    if args.out:
        Path(args.out).write_text(json.dumps({str(k): v for k, v in per_seed.items()}, indent=2) + "\n")
    return 0


def _interval(values: list[float]) -> str:
    from scipy.stats import t

    x = torch.tensor(values, dtype=torch.float64)
    half = float(t.ppf(0.95, len(values) - 1) * x.std() / len(values) ** 0.5)
    return f"{float(x.mean()):+.4f} [{float(x.mean()) - half:+.4f}, {float(x.mean()) + half:+.4f}]"


def summary(per_seed: dict[int, list[dict]]) -> str:
    """Each run's mean loss and the paired differences of the comparisons, 90% Student t over seeds."""
    names = [row["run"] for row in next(iter(per_seed.values()))]
    loss = {name: [next(r["val_loss"] for r in rows if r["run"] == name) for rows in per_seed.values()]
            for name in names}
    lines = [f"over {len(per_seed)} seeds: mean val loss [90% t interval]"]
    lines += [f"  {name:<44} {_interval(values)}" for name, values in loss.items()]
    shared, half, full, unshared = names[:4]
    for label, a, b in (("shared - unshared half depth (same parameters)", shared, half),
                        ("shared - unshared full depth (same compute)", shared, full),
                        ("share then unshare - unshared full depth", unshared, full)):
        lines.append(f"  {label:<52} {_interval([x - y for x, y in zip(loss[a], loss[b])])}")
    return "\n".join(lines)

if __name__ == "__main__":
    sys.exit(main())

"""Cross-layer parameter sharing: quality at equal stored parameters, at equal compute, and after conversion.

Three comparisons on the bytes of a few stdlib modules (vocabulary 256), every model trained with the
same AdamW settings and batches, validation loss on fixed held-out windows (no timing is measured):

1. **Same stored parameters**: ``N`` layers sharing ``N / 2`` blocks by ``cycle`` (Takase & Kiyono
   2021) against an unshared ``N / 2``-layer model: the same parameters, twice the compute for the
   shared model.
2. **Same compute**: the same shared model against the unshared ``N``-layer model (equal FLOPs per
   token, half the parameters), and the growth path: the shared model trained for half the steps,
   unshared exactly (:mod:`transformer_grow.grow.unshare`), trained for the other half.
3. **Conversion to 50% of the parameters** (:func:`transformer_grow.grow.share.convert`) of the trained
   ``N``-layer model, with and without LoRA deltas: loss before conversion, right after it, and after
   ``--retrain-steps`` of retraining.

Run: ``PYTHONPATH=src python benchmarks/sharing.py`` (``--tiny`` checks that it runs in seconds;
``--out FILE`` writes the JSON results).
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from pathlib import Path

import torch

from transformer_grow.grow import grow
from transformer_grow.grow.share import convert
from transformer_grow.model import GPT, ModelConfig

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

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch: int):
        self.tokens, self.seq_len, self.batch = tokens, seq_len, batch
        self.cut = int(0.9 * len(tokens))
        g = torch.Generator().manual_seed(12345)
        starts = torch.randint(self.cut, len(tokens) - seq_len - 1, (EVAL_WINDOWS,), generator=g)
        self.val = torch.stack([tokens[s: s + seq_len + 1] for s in starts.tolist()])

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(step)
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
    data = Data(corpus(), setting["seq_len"], setting["batch"])
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    rows = run(SETTINGS["tiny" if args.tiny else "full"], args.seed)
    for row in rows:
        print(f"{row['run']:<44} {row['comparison']:<24} params {row['params_nonembedding']:>10,} "
              f"FLOPs/tok {row['flops_per_token']:>12,} val loss {row['val_loss']:.4f}"
              + (f" (trained {row['loss_trained']:.4f}, converted {row['loss_converted']:.4f})"
                 if "loss_converted" in row else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training metrics: one JSON object per line in ``<run>/metrics.jsonl``, optional TensorBoard.

Each record has ``step`` (optimizer steps completed), ``tokens``, ``flops`` (cumulative training
FLOPs), ``wall_seconds`` (cumulative time spent in training steps, excluding evaluation and
checkpoint writes), ``lr``, ``train_loss`` (mean over the steps since the previous record),
``tokens_per_s`` (over the same steps) and, when evaluated at that step, ``val_loss``. Other records
(events such as a model replacement) carry an ``event`` key.

Lines are appended with one ``write`` each and flushed; a reader skips an incomplete last line (a
killed writer), and a resumed run rewrites the file atomically without records past its checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from transformer_grow.io import atomic_write_text, json_text

METRICS_FILENAME = "metrics.jsonl"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf
    return value


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a metrics file (an unfinished last line is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: str | os.PathLike, max_step: int) -> None:
    """Atomically drop records with ``step > max_step`` (written after the checkpoint a run resumes from)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= max_step]
    atomic_write_text(path, "".join(json_text(r) + "\n" for r in kept))


class MetricsLog:
    """Appends metric records to ``metrics.jsonl`` in ``out_dir`` (if given) and keeps them in ``records``."""

    def __init__(self, out_dir: str | os.PathLike | None, tensorboard: bool = False):
        self.records: list[dict[str, Any]] = []
        self.path = None if out_dir is None else Path(out_dir) / METRICS_FILENAME
        self._tb = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        record = {k: _jsonable(v) for k, v in record.items()}
        self.records.append(record)
        if self.path is not None:
            line = json_text(record) + "\n"
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        if self._tb is not None and "event" not in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, global_step=record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class ProgressBar:
    """A tqdm bar on stderr (steps, ETA, and the latest loss, tokens/s and val loss); a no-op when disabled."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total
        self._bar: tqdm | None = None

    def update(self, step: int, record: dict[str, Any] | None) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = tqdm(total=self.total, initial=step - 1, unit="step", file=sys.stderr, dynamic_ncols=True,
                             desc="train")
        self._bar.update(1)
        if record is not None:
            postfix = {}
            if record.get("train_loss") is not None:
                postfix["loss"] = f"{record['train_loss']:.4f}"
            if record.get("tokens_per_s"):
                postfix["tok/s"] = f"{record['tokens_per_s']:,.0f}"
            if record.get("val_loss") is not None:
                postfix["val"] = f"{record['val_loss']:.4f}"
            self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

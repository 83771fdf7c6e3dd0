"""Shared helpers for the trainer, checkpoint and CLI tests (no tests here).

The corpus is a few standard-library source files written to one text file: deterministic for a
given Python, about 110 kB, tokenized with the ``bytes`` tokenizer in milliseconds.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from transformer_grow.data import DataConfig, TokenData, prepare_data
from transformer_grow.model import ModelConfig, preset
from transformer_grow.train import TrainConfig

CORPUS_MODULES = ("json.decoder", "json.encoder", "json.scanner", "argparse")


def write_corpus(directory: Path) -> Path:
    """One text file of standard-library source in ``directory``."""
    import importlib

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "corpus.txt"
    path.write_text("\n".join(inspect.getsource(importlib.import_module(m)) for m in CORPUS_MODULES),
                    encoding="utf-8")
    return path


def data_config(root: Path) -> DataConfig:
    return DataConfig(corpus=str(write_corpus(root / "corpus")), tokenizer="bytes", cache_dir=str(root / "cache"))


def prepare_bytes_data(root: Path) -> tuple[TokenData, DataConfig]:
    """Real ``prepare_data`` on the corpus with the bytes tokenizer, cached under ``root``."""
    config = data_config(root)
    return prepare_data(config, progress=False), config


def micro_model(**overrides) -> ModelConfig:
    """The ``micro`` preset (2 layers, width 64, context 64) on the byte vocabulary."""
    return preset("micro", vocab_size=256, **overrides)


def fast_train_config(**overrides) -> TrainConfig:
    """CPU, fp32, short evaluations; override the budget and intervals per test."""
    settings = {"batch_size": 8, "max_steps": 20, "lr": 3e-3, "warmup_steps": 5, "eval_interval": 0,
                "eval_windows": 8, "log_interval": 5, "ckpt_interval": 0, "device": "cpu", "dtype": "fp32", "seed": 0}
    return TrainConfig(**{**settings, **overrides})


def cli_data_args(root: Path) -> list[str]:
    """Data and tiny-model flags for `tgrow train` on the test corpus."""
    return ["--corpus", str(write_corpus(root / "corpus")), "--tokenizer", "bytes", "--cache-dir", str(root / "cache")]


TINY_MODEL_ARGS = ["--preset", "micro", "--n-layer", "1", "--d-model", "32", "--seq-len", "32"]
FAST_TRAIN_ARGS = ["--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "2", "--eval-windows", "4",
                   "--device", "cpu", "--dtype", "fp32", "--no-progress"]


def train_tiny_run(out: Path, data_args: list[str], steps: int = 6, *extra: str) -> Path:
    """`tgrow train` of the 1-layer, width-32 model for ``steps`` steps into ``out``; returns ``out``."""
    from transformer_grow.cli.main import main

    rc = main(["train", *TINY_MODEL_ARGS, *FAST_TRAIN_ARGS, *data_args, "--max-steps", str(steps), *extra,
               "--out", str(out)])
    assert rc == 0
    return out

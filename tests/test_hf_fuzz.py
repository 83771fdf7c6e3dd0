"""Hostile Hugging Face directories (issue 22, the directory surface of tests/test_fuzz_cli.py): seeded
random damage to config.json and to the safetensors weights (truncation, flipped bytes, wrong shapes and
dtypes, missing and extra tensors, NaN and inf), to a tiny model of each family. `tgrow grow --hf` must
either refuse in one line with exit 2 (no traceback, nothing written) or succeed with a finite
certificate: never a traceback, never a number that is not a number.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
import transformers as T
from grow_fixtures import single_thread  # noqa: F401  (autouse: one intra-op thread)
from reliability_helpers import assert_refused, tgrow
from safetensors.torch import load_file, save_file
from test_hf_convert import CONFIGS

pytestmark = pytest.mark.filterwarnings("ignore")  # transformers warns about the damaged configs it reads
WEIGHTS = "model.safetensors"
FAMILIES = ("llama", "gpt2", "mixtral", "bert")
CASES_PER_FAMILY = 14
HOSTILE = [None, -1, 0, 1, 3, 33, 10**9, 1e308, float("nan"), "abc", [], {}, True, 0.5]


def _bert_config():
    return T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=128, max_position_embeddings=32)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf-sources")
    for name in FAMILIES:
        torch.manual_seed(0)
        if name == "bert":
            model = T.BertForMaskedLM(_bert_config())
        else:
            model = T.AutoModelForCausalLM.from_config(CONFIGS[name]())
        model.save_pretrained(root / name)
    (root / "target.json").write_text(json.dumps({"model": {"n_layer": 3}}))
    return root


# Each damage returns what it did and whether the result must be refused (True: the directory is certainly
# invalid: a missing, extra or reshaped tensor, NaN/inf, a cut file, a pickle; False: it may still hold a
# model, which must then be certified with finite numbers).


# ------------------------------------------------------------------------------- config damage
def _config_edit(rng: random.Random, path: Path) -> tuple[str, bool]:
    settings = json.loads((path / "config.json").read_text())
    key = rng.choice(sorted(settings))
    if rng.random() < 0.25:
        del settings[key]
        what = f"config.json without {key}"
    else:
        value = rng.choice(HOSTILE)
        settings[key] = value
        what = f"config.json {key}={value!r}"
    (path / "config.json").write_text(json.dumps(settings))
    return what, False


def _config_truncated(rng: random.Random, path: Path) -> tuple[str, bool]:
    text = (path / "config.json").read_text()
    cut = rng.randrange(len(text))
    (path / "config.json").write_text(text[:cut])
    return f"config.json cut at {cut}", True


# ------------------------------------------------------------------------------ weights damage
def _edit_tensors(path: Path, edit) -> None:
    state = load_file(path / WEIGHTS)
    edit(state)
    save_file(state, path / WEIGHTS, metadata={"format": "pt"})


def _truncated(rng: random.Random, path: Path) -> tuple[str, bool]:
    data = (path / WEIGHTS).read_bytes()
    cut = rng.randrange(len(data))
    (path / WEIGHTS).write_bytes(data[:cut])
    return f"weights cut at {cut} of {len(data)}", True


def _flipped_byte(rng: random.Random, path: Path) -> tuple[str, bool]:
    data = bytearray((path / WEIGHTS).read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    at = rng.randrange(header) if rng.random() < 0.6 else rng.randrange(header, len(data))
    data[at] ^= 1 << rng.randrange(8)
    (path / WEIGHTS).write_bytes(bytes(data))
    return f"weights byte {at} flipped (header ends at {header})", False


def _missing(rng: random.Random, path: Path) -> tuple[str, bool]:
    name = rng.choice(sorted(load_file(path / WEIGHTS)))
    _edit_tensors(path, lambda s: s.pop(name))
    return f"without {name}", True


def _extra(rng: random.Random, path: Path) -> tuple[str, bool]:
    name = rng.choice(sorted(load_file(path / WEIGHTS)))
    extra = name.replace("weight", "scale") if rng.random() < 0.5 else "layers.9." + name
    _edit_tensors(path, lambda s: s.__setitem__(extra, s[name].clone()))
    return f"with an extra {extra}", True


def _wrong_shape(rng: random.Random, path: Path) -> tuple[str, bool]:
    name = rng.choice(sorted(load_file(path / WEIGHTS)))
    shapes = []

    def edit(state):
        t = state[name]
        shape = list(t.shape)
        axis = rng.randrange(len(shape))
        shape[axis] += rng.choice([-1, 1]) if shape[axis] > 1 else 1
        state[name] = torch.zeros(shape, dtype=t.dtype) if rng.random() < 0.5 else t.reshape(-1)
        shapes.extend([t.shape, state[name].shape])

    _edit_tensors(path, edit)
    return f"{name} reshaped {tuple(shapes[0])} -> {tuple(shapes[1])}", shapes[0] != shapes[1]


def _non_finite(rng: random.Random, path: Path) -> tuple[str, bool]:
    name = rng.choice(sorted(load_file(path / WEIGHTS)))
    value = rng.choice([float("nan"), float("inf"), float("-inf"), 3e38])
    _edit_tensors(path, lambda s: s[name].view(-1).__setitem__(rng.randrange(s[name].numel()), value))
    return f"{name} holds {value}", not math.isfinite(value)


def _wrong_dtype(rng: random.Random, path: Path) -> tuple[str, bool]:
    name = rng.choice(sorted(load_file(path / WEIGHTS)))
    dtype = rng.choice([torch.int32, torch.int8, torch.bool, torch.float16, torch.bfloat16])
    _edit_tensors(path, lambda s: s.__setitem__(name, s[name].to(dtype)))
    return f"{name} as {dtype}", not dtype.is_floating_point


def _pickle_only(rng: random.Random, path: Path) -> tuple[str, bool]:
    state = load_file(path / WEIGHTS)
    (path / WEIGHTS).unlink()
    torch.save(state, path / rng.choice(["pytorch_model.bin", "model.pt", "weights.ckpt"]))
    return "pickled weights only", True


DAMAGE = [_config_edit, _config_edit, _config_truncated, _truncated, _flipped_byte, _missing, _extra,
          _wrong_shape, _non_finite, _wrong_dtype, _pickle_only, _config_edit, _flipped_byte, _non_finite]


def cases() -> list[tuple[str, int]]:
    return [(name, seed) for name in FAMILIES for seed in range(CASES_PER_FAMILY)]


@pytest.mark.parametrize("name, seed", cases())
def test_a_damaged_directory_is_refused_in_one_line_or_certified_finite(name, seed, sources, tmp_path, capsys):
    rng = random.Random(f"{name}-{seed}")
    src = tmp_path / "src"
    shutil.copytree(sources / name, src)
    damage = DAMAGE[seed % len(DAMAGE)]
    what, must_refuse = damage(rng, src)
    out = tmp_path / "out"
    result = tgrow(capsys, "grow", "--hf", src, "--to", sources / "target.json", "--depth", "insert_zero",
                   "--out", out)
    rc, stdout, err = result
    assert rc == 2 or not must_refuse, f"{what}: exit {rc}, expected a refusal"
    if rc == 0:  # the damage left a model we can read: its certificate must be a real one
        record = json.loads((out / "growth_record.json").read_text())
        p = record["preservation"]
        numbers = [p["max_abs_dlogits"], p["dloss"], p["conversion_max_abs_dlogits"], record["reload_max_abs_dlogits"]]
        assert all(isinstance(x, float) and math.isfinite(x) for x in numbers), (what, p)
        assert "nan" not in stdout.lower(), (what, stdout)
        return
    assert_refused(result)
    assert "error:" in err, (what, err)
    assert not out.exists(), what
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"], what  # nothing half-written beside it


def test_every_damage_is_fuzzed():
    assert {DAMAGE[seed % len(DAMAGE)] for _, seed in cases()} == set(DAMAGE)

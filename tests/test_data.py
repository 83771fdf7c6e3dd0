"""Tests of the data pipeline: tokenizers, corpora, cache, deterministic batches, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from transformer_grow.data import DataConfig, TokenData, Tokenizer, prepare_data
from transformer_grow.data.corpus import list_stdlib_files, open_text_corpus, split_by_hash, stdlib_root
from transformer_grow.errors import ConfigError

UNICODE_TEXT = "héllo wörld 🙂\n\tdef f(x):\n        return x  # ∑ ≠ ∞\x00\x7f"


def write_text_corpus(root: Path, n_files: int = 12, words_per_file: int = 400, seed: int = 0) -> Path:
    """A small directory of pseudo-English text files (deterministic)."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "zu"]
    lexicon = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(60)]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        lines = [" ".join(rng.choice(lexicon) for _ in range(10)) + "." for _ in range(words_per_file // 10)]
        (root / f"doc_{i:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def synthetic_data(n_train: int = 5000, n_val: int = 700) -> TokenData:
    rng = np.random.default_rng(0)
    return TokenData(train=rng.integers(0, 1000, n_train).astype(np.uint16),
                     val=rng.integers(0, 1000, n_val).astype(np.uint16), vocab_size=1000)


# ---- tokenizers ---------------------------------------------------------------------------------

def test_bytes_tokenizer_round_trip_and_json(tmp_path):
    tok = Tokenizer.bytes_level()
    assert tok.kind == "bytes" and tok.vocab_size == 256
    ids = tok.encode(UNICODE_TEXT)
    assert ids == list(UNICODE_TEXT.encode("utf-8"))
    assert ids == tok.hf.encode(UNICODE_TEXT).ids  # the fast path agrees with the saved HF pipeline
    assert tok.decode(ids) == UNICODE_TEXT
    path = tok.save(tmp_path / "bytes.json")
    assert json.loads(path.read_text())["model"]["type"] == "BPE"  # plain HF tokenizer JSON
    loaded = Tokenizer.load(path)
    assert loaded.kind == "bytes" and loaded.encode(UNICODE_TEXT) == ids


def test_bpe_tokenizer_trained_cached_and_round_trips(tmp_path):
    corpus = write_text_corpus(tmp_path / "corpus")
    cfg = DataConfig(corpus=str(corpus), tokenizer="bpe", vocab_size=320, cache_dir=str(tmp_path / "cache"))
    data = prepare_data(cfg, progress=False)
    tok = data.tokenizer
    assert tok.kind == "bpe" and 256 < tok.vocab_size <= 320 and data.vocab_size == tok.vocab_size
    sample = (corpus / "doc_00.txt").read_text()[:500]
    ids = tok.encode(sample)
    assert len(ids) < len(sample.encode()) / 1.5  # merges were learned: clearly fewer tokens than bytes
    assert tok.decode(ids) == sample
    assert tok.decode(tok.encode(UNICODE_TEXT)) == UNICODE_TEXT  # byte-level: nothing is unknown
    assert max(max(data.train), max(data.val)) < tok.vocab_size
    reloaded = Tokenizer.load(tok.save(tmp_path / "tok.json"))
    assert reloaded.encode(sample) == ids and reloaded.decode(ids) == sample
    cached = list((tmp_path / "cache" / "tokenizers").glob("bpe-*.json"))
    assert len(cached) == 1
    again = prepare_data(cfg, progress=False)
    assert again.fingerprint == data.fingerprint and again.tokenizer.to_json() == tok.to_json()


# ---- corpora ------------------------------------------------------------------------------------

def test_stdlib_corpus_discovery_and_split():
    files = list_stdlib_files()
    assert len(files) > 100 and files == sorted(files)
    assert all(f.endswith(".py") for f in files)
    excluded = {"site-packages", "dist-packages", "test", "tests", "idle_test"}
    assert not any(excluded & set(Path(f).parts[:-1]) for f in files)
    assert "os.py" in files and "json/decoder.py" in files
    assert all((stdlib_root() / f).is_file() for f in files[:20])

    corpus = open_text_corpus("stdlib", 0.05)
    train, val = corpus.split_files("train"), corpus.split_files("val")
    assert set(train).isdisjoint(val) and sorted(train + val) == files
    assert 0.01 < len(val) / len(files) < 0.15
    assert open_text_corpus("stdlib", 0.05).split_files("val") == val  # stable
    assert "python" in corpus.label.lower() or any(ch.isdigit() for ch in corpus.label)


def test_split_by_hash_is_stable_under_additions_and_never_empty():
    names = [f"f{i}.txt" for i in range(200)]
    split = split_by_hash(names, 0.1)
    grown = split_by_hash([*names, "new_a.txt", "new_b.txt"], 0.1)
    assert all(grown[n] == split[n] for n in names)  # adding files moves no other file
    two = split_by_hash(["a.txt", "b.txt"], 0.05)
    assert sorted(two.values()) == ["train", "val"]


def test_stdlib_bytes_corpus_prepares_and_reloads_from_cache(tmp_path):
    cfg = DataConfig(corpus="stdlib", tokenizer="bytes", cache_dir=str(tmp_path))
    data = prepare_data(cfg, progress=False)
    total = sum((stdlib_root() / f).stat().st_size for f in list_stdlib_files())
    assert len(data.train) + len(data.val) == total  # every byte of every file, once
    assert data.train.dtype == np.uint16 and data.vocab_size == 256
    again = prepare_data(cfg, progress=False)
    assert isinstance(again.train, np.memmap) and again.fingerprint == data.fingerprint
    assert torch.equal(again.val_windows(128, 8), data.val_windows(128, 8))


def test_single_text_file_is_split_by_position(tmp_path):
    text = "".join(f"line {i}: héllo wörld 🙂 ∑ ≠ ∞\n" for i in range(300))
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    data = prepare_data(DataConfig(corpus=str(path), tokenizer="bytes", val_fraction=0.1,
                                   cache_dir=str(tmp_path / "cache")), progress=False)
    joined = bytes(np.concatenate([data.train, data.val]).astype(np.uint8)).decode("utf-8")
    assert joined == text
    assert 0.05 < len(data.val) / (len(data.train) + len(data.val)) < 0.15
    assert bytes(data.val[:5].astype(np.uint8)).decode().startswith("line")  # cut at a line start


def test_directory_corpus_reads_text_files_only_and_tracks_contents(tmp_path):
    corpus = write_text_corpus(tmp_path / "c", n_files=4)
    (corpus / ".hidden.txt").write_text("SECRET " * 50)
    (corpus / "image.png").write_bytes(b"\x89PNG" + bytes(100))
    (corpus / "sub").mkdir()
    (corpus / "sub" / "notes.md").write_text("nested markdown\n" * 20)
    files = open_text_corpus(str(corpus), 0.2).files
    assert files == ["doc_00.txt", "doc_01.txt", "doc_02.txt", "doc_03.txt", "sub/notes.md"]
    cfg = DataConfig(corpus=str(corpus), tokenizer="bytes", val_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    before = prepare_data(cfg, progress=False)
    (corpus / "sub" / "notes.md").write_text("changed markdown\n" * 20)
    after = prepare_data(cfg, progress=False)
    assert after.fingerprint != before.fingerprint  # cache keyed by contents, not just names


def test_cache_is_reused_and_rebuilt_when_incomplete(tmp_path, monkeypatch):
    corpus = write_text_corpus(tmp_path / "c", n_files=5)
    cfg = DataConfig(corpus=str(corpus), tokenizer="bytes", val_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    first = prepare_data(cfg, progress=False)
    entry = tmp_path / "cache" / "tokens" / first.fingerprint
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "train.bin", "val.bin"]

    def no_encoding(*args, **kwargs):
        raise AssertionError("a cached corpus must not be encoded again")

    monkeypatch.setattr(Tokenizer, "encode_to_array", no_encoding)
    assert np.array_equal(prepare_data(cfg, progress=False).train, first.train)
    (entry / "meta.json").unlink()  # as if a run died before finishing the entry
    with pytest.raises(AssertionError, match="must not be encoded"):
        prepare_data(cfg, progress=False)
    monkeypatch.undo()
    assert np.array_equal(prepare_data(cfg, progress=False).train, first.train)


def test_npy_and_bin_token_files(tmp_path):
    tokens = (np.arange(1000) * 7 % 100).astype(np.int32)
    npy = tmp_path / "tokens.npy"
    np.save(npy, tokens)
    data = prepare_data(DataConfig(corpus=str(npy), val_fraction=0.1), progress=False)
    assert data.tokenizer is None and data.vocab_size == 100  # inferred: max + 1
    assert len(data.train) == 900 and np.array_equal(np.concatenate([data.train, data.val]), tokens)
    assert prepare_data(DataConfig(corpus=str(npy), vocab_size=500), progress=False).vocab_size == 500
    with pytest.raises(ConfigError, match="vocab_size=50"):
        prepare_data(DataConfig(corpus=str(npy), vocab_size=50), progress=False)

    binary = tmp_path / "tokens.bin"
    tokens.astype(np.uint16).tofile(binary)
    from_bin = prepare_data(DataConfig(corpus=str(binary), token_dtype="uint16", val_fraction=0.1), progress=False)
    assert np.array_equal(np.asarray(from_bin.train), np.asarray(data.train))
    with pytest.raises(ConfigError, match="token_dtype"):
        prepare_data(DataConfig(corpus=str(binary)), progress=False)
    x, y = from_bin.batch(step=0, batch_size=4, seq_len=16, seed=0)
    assert x.shape == y.shape == (4, 16) and int(x.max()) < 100
    tokens[:999].astype(np.uint16).view(np.uint8)[:-1].tofile(binary)  # odd byte count
    with pytest.raises(ConfigError, match="not a whole number of uint16"):
        prepare_data(DataConfig(corpus=str(binary), token_dtype="uint16"), progress=False)


# ---- batches ------------------------------------------------------------------------------------

def test_batch_is_pure_function_of_seed_and_step():
    data = synthetic_data()
    x5, y5 = data.batch(step=5, batch_size=8, seq_len=32, seed=1)
    data.batch(step=6, batch_size=8, seq_len=32, seed=1)  # no hidden state between calls
    x5b, y5b = synthetic_data().batch(step=5, batch_size=8, seq_len=32, seed=1)
    assert torch.equal(x5, x5b) and torch.equal(y5, y5b)
    assert not torch.equal(x5, data.batch(step=6, batch_size=8, seq_len=32, seed=1)[0])
    assert not torch.equal(x5, data.batch(step=5, batch_size=8, seq_len=32, seed=2)[0])
    assert x5.dtype == torch.long and x5.shape == (8, 32) and x5.is_contiguous() and y5.is_contiguous()
    assert torch.equal(x5[:, 1:], y5[:, :-1])
    starts = data.batch_starts(5, 8, 32, 1)
    for row, start in zip(x5, starts):  # each row is a contiguous window of the train split
        assert np.array_equal(row.numpy(), data.train[start:start + 32])
        assert y5[list(starts).index(start), -1] == int(data.train[start + 32])


def test_rank_slices_concatenate_to_global_batch():
    data = synthetic_data()
    x, y = data.batch(step=3, batch_size=8, seq_len=16, seed=7)
    parts = [data.batch(step=3, batch_size=8, seq_len=16, seed=7, rank=r, world_size=4) for r in range(4)]
    assert all(p[0].shape == (2, 16) for p in parts)
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


def test_val_windows_fixed_and_evenly_spaced():
    data = synthetic_data(n_val=700)
    windows = data.val_windows(seq_len=63, n_windows=5)
    assert windows.shape == (5, 64) and windows.dtype == torch.long
    assert np.array_equal(windows[0].numpy(), data.val[:64])
    assert np.array_equal(windows[-1].numpy(), data.val[-64:])
    assert torch.equal(windows, synthetic_data(n_val=700).val_windows(seq_len=63, n_windows=5))


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "named"), [
    ({"corpus": "/no/such/corpus_dir"}, "/no/such/corpus_dir"),
    ({"corpus": "/no/such/tokens.npy"}, "/no/such/tokens.npy"),
    ({"corpus": ""}, "corpus=''"),
    ({"vocab_size": 100}, "vocab_size=100"),
    ({"vocab_size": 1 << 21}, f"vocab_size={1 << 21}"),
    ({"vocab_size": "big"}, "vocab_size='big'"),
    ({"tokenizer": "sentencepiece"}, "tokenizer='sentencepiece'"),
    ({"val_fraction": 0.0}, "val_fraction=0.0"),
    ({"val_fraction": 1.5}, "val_fraction=1.5"),
    ({"token_dtype": "int8"}, "token_dtype='int8'"),
    ({"corpus": "hf:"}, "corpus='hf:'"),
])
def test_bad_config_raises_config_error_naming_value(tmp_path, overrides, named):
    cfg = DataConfig(cache_dir=str(tmp_path), **overrides)
    with pytest.raises(ConfigError) as info:
        prepare_data(cfg, progress=False)
    assert named in str(info.value)
    assert not any(tmp_path.iterdir())  # refused before any work


def test_hf_corpus_without_datasets_says_how_to_install(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "datasets" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'transformer-grow\[hf\]'"):
        DataConfig(corpus="hf:wikitext:wikitext-2-raw-v1").validate()


def test_bad_batch_arguments_raise_config_error():
    data = synthetic_data(n_train=5000, n_val=700)
    with pytest.raises(ConfigError, match=r"seq_len=700.*5000.*700"):
        data.check_seq_len(700)
    data.check_seq_len(699)
    with pytest.raises(ConfigError, match=r"seq_len=5000"):
        data.batch(step=0, batch_size=2, seq_len=5000, seed=0)
    with pytest.raises(ConfigError, match=r"batch_size=6 is not divisible by world_size=4"):
        data.batch(step=0, batch_size=6, seq_len=8, seed=0, rank=0, world_size=4)
    with pytest.raises(ConfigError, match=r"rank=4"):
        data.batch(step=0, batch_size=8, seq_len=8, seed=0, rank=4, world_size=4)
    with pytest.raises(ConfigError, match=r"step=-1"):
        data.batch(step=-1, batch_size=8, seq_len=8, seed=0)
    with pytest.raises(ConfigError, match=r"n_windows=0"):
        data.val_windows(seq_len=8, n_windows=0)

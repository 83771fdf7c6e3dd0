"""The seed API: GrowthManager(model=..., strategy=..., target_size=..., budget=...).grow_and_train(loader),
for our GPT and a tiny HF Llama; budgets and sizes as strings; iterables as data; `parallel=` for DDP/FSDP;
`tgrow compare --hf-config` and `tgrow hf export` round-tripping logits."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from transformer_grow import GrowthManager
from transformer_grow.cli.main import main
from transformer_grow.data.iterable import IterableTokens
from transformer_grow.errors import ConfigError
from transformer_grow.model import GPT, preset
from transformer_grow.run.api import Budget, parse_budget, parse_count
from transformer_grow.train.config import TrainConfig

pytestmark = [pytest.mark.filterwarnings("ignore::transformer_grow.plans.timing.GrowthTimingWarning"),
              pytest.mark.usefixtures("one_torch_thread")]  # tiny budgets

VOCAB, SEQ = 64, 16
TRAIN = TrainConfig(batch_size=8, lr=3e-3, warmup_steps=2, max_steps=1, device="cpu")
FAST = dict(train_config=TRAIN, n_evals=2, eval_windows=8)




def windows(n: int = 160, length: int = SEQ + 1) -> torch.Tensor:
    """``[n, length]`` token windows with learnable structure (arithmetic progressions mod VOCAB)."""
    base = torch.arange(length)
    return torch.stack([(base * (i % 7 + 1) + i) % VOCAB for i in range(n)])


def small_gpt(seq_len: int = SEQ) -> GPT:
    torch.manual_seed(0)
    return GPT(preset("micro", vocab_size=VOCAB, seq_len=seq_len, n_layer=2, d_model=32, n_head=2, norm="rmsnorm",
                      mlp="swiglu"))


def tiny_llama():
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=SEQ)
    return T.LlamaForCausalLM(config).eval()


def loss_on(logits: torch.Tensor, rows: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1)))


# ------------------------------------------------------------------------------ our GPT
def test_seed_api_grows_our_gpt_from_a_dataloader():
    model, data = small_gpt(), windows()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lines: list[str] = []
    manager = GrowthManager(model=model, strategy="g_stack", target_size="100K", budget="20K tokens",
                            log=lines.append, **FAST)
    # the derived architecture, parameters, tokens and FLOPs are shown before any training
    assert lines and not any("step" in line and "val" in line for line in lines)
    assert any("target (100K): L=3 d=48" in line and "parameters" in line and "FLOPs/token" in line for line in lines)
    assert any("budget: 20,000 tokens" in line and "FLOPs" in line for line in lines)
    val = data[-16:]
    large = manager.grow_and_train(DataLoader(data[:-16], batch_size=8), DataLoader(val, batch_size=4))

    assert isinstance(large, GPT) and large.config.replace(norm_eps=1e-5) == manager.plan.target  # zero_pad: eps
    assert (large.config.n_layer, large.config.d_model, large.config.n_head, large.config.d_ff) == (3, 48, 3, 192)
    assert sum(p.numel() for p in large.parameters()) > sum(p.numel() for p in model.parameters())
    record = manager.result.record
    assert [s["model"] for s in record.stages] == ["L=2 d=32 heads=2x16 ffn=128 seq=16",
                                                  "L=3 d=48 heads=3x16 ffn=192 seq=16"]
    assert len(record.events) == 1 and record.events[0]["kind"] == "exact"
    # the first stage is the given model: the step-0 validation loss is its own, and it was not trained in place
    with torch.no_grad():
        first = val[:8]  # eval_windows=8: the first windows of eval_data
        assert record.curve[0].val_loss == pytest.approx(loss_on(model.eval()(first[:, :-1]).logits, first), abs=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert record.curve[-1].val_loss < record.curve[0].val_loss - 0.5  # it learned
    budget_flops = manager.account.budget
    assert abs(record.total_flops - budget_flops) <= budget_flops * 0.05  # the FLOP budget was held


def test_an_interrupted_iterable_run_resumes_exactly(tmp_path):
    data = windows()

    def manager(out):
        return GrowthManager(model=small_gpt(), strategy="g_stack", target_size="100K", budget="8K tokens",
                             out_dir=out, log=None, **FAST)

    whole = manager(tmp_path / "whole").grow_and_train(DataLoader(data, batch_size=8))
    first = manager(tmp_path / "cut")
    assert first.grow_and_train(DataLoader(data, batch_size=8), limit_steps=40) is None  # after growth
    again = manager(tmp_path / "cut")  # a new process: a fresh loader, skipped to the checkpoint's step
    resumed = again.grow_and_train(DataLoader(data, batch_size=8))
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    assert again.result.record.events[0]["step"] < 40 < again.result.record.total_tokens // (8 * SEQ)
    # a run of our own model records no family: it exports to the one named (here Llama's architecture)
    assert main(["hf", "export", str(tmp_path / "whole"), "--out", str(tmp_path / "hf")]) == 2
    assert main(["hf", "export", str(tmp_path / "whole"), "--out", str(tmp_path / "hf"), "--family", "llama"]) == 0
    import transformers as T

    from transformer_grow.hf import hf_logits

    reloaded, x = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf"), data[:2, :-1]
    with torch.no_grad():
        assert (hf_logits(reloaded, x) - whole(x).logits).abs().max() <= 1e-5


# ------------------------------------------------------------------------------- HF model
def test_seed_api_grows_a_hugging_face_llama():
    from transformer_grow.hf import from_hf, hf_logits

    hf, data = tiny_llama(), windows()
    val = data[-16:]
    manager = GrowthManager(model=hf, strategy="g_stack", target_size="80K", budget="8K tokens", log=None, **FAST)
    large = manager.grow_and_train(DataLoader(data[:-16], batch_size=8), [val])
    assert type(large).__name__ == "LlamaForCausalLM" and not large.training
    n_hf = sum(p.numel() for p in hf.parameters())
    assert sum(p.numel() for p in large.parameters()) > 2 * n_hf
    ours = manager.result.model
    assert from_hf(large, SEQ)[0].config == ours.config  # the same architecture, read back
    with torch.no_grad():
        assert (hf_logits(large, val[:, :-1]) - ours(val[:, :-1]).logits).abs().max() <= 1e-5
    # trained from the HF model's weights: the step-0 validation loss is the HF model's own
    first = val[:8]  # eval_windows=8
    start_loss = loss_on(hf_logits(hf, first[:, :-1]), first)
    assert manager.result.record.curve[0].val_loss == pytest.approx(start_loss, abs=1e-5)
    assert manager.hf_family["family"] == "llama"


def test_an_hf_config_is_a_target_of_the_plan_api():
    llama = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": VOCAB, "max_position_embeddings": 64}
    manager = GrowthManager(llama, "g_stack", budget_tokens=20_000, seq_len=SEQ, log=None, **FAST)
    target = manager.plan.target
    assert (target.n_layer, target.d_model, target.n_kv_head, target.seq_len, target.norm) == (4, 32, 2, SEQ, "rmsnorm")
    assert manager.plan.stages[0].model.n_layer == 2 and manager.hf_family["hf_class"] == "LlamaForCausalLM"
    with pytest.raises(ConfigError, match="HF model_type='t5' is not supported; choose one of 'gpt2', 'llama'"):
        GrowthManager({**llama, "model_type": "t5"}, "g_stack", budget_tokens=20_000)


# --------------------------------------------------------------------- strings and refusals
def test_budget_and_size_strings():
    assert parse_budget("100B tokens") == Budget(100 * 10**9, "tokens")
    assert parse_budget("2M tokens") == Budget(2 * 10**6, "tokens")
    assert parse_budget("3e21 FLOPs") == Budget(3 * 10**21, "flops")
    assert parse_budget(5000) == Budget(5000, "tokens")
    assert parse_count("7B", "target_size") == 7 * 10**9
    assert parse_count("350M", "target_size") == 350 * 10**6
    assert parse_count("1.2e8", "target_size") == 120_000_000
    # a FLOP budget is the target trained from scratch on that many FLOPs
    manager = GrowthManager(model=small_gpt(), target_size="100K", budget="2e10 FLOPs", log=None, **FAST)
    assert manager.plan.budget_tokens == round(2e10 / manager.account.stages[-1].flops_per_token)


@pytest.mark.parametrize("kwargs, message", [
    ({"budget": "100 apples"}, "budget='100 apples' is not allowed; write a positive count and a unit"),
    ({"budget": "-3B tokens"}, "budget='-3B tokens' is not allowed"),
    ({"target_size": "-3B"}, "target_size='-3B' is not allowed; write a positive number"),
    ({"target_size": "seven"}, "target_size='seven' is not allowed"),
    ({"target_size": "20K"}, r"target_size='20K' \(20,000 parameters\) is not larger than the model"),
    ({"target_size": "1000T"}, r"target_size='1000T' .*no architecture of this model's shape reaches it"),
    ({"strategy": "grow_fast"}, "strategy='grow_fast' is not allowed; choose one of 'g_stack', 'compound'"),
    ({"target_size": {"n_layer": 1}}, "the model cannot grow into the target"),
])
def test_bad_seed_arguments_are_refused_in_one_line(kwargs, message):
    args = {"model": small_gpt(), "strategy": "g_stack", "target_size": "100K", "budget": "20K tokens", **kwargs}
    with pytest.raises(ConfigError, match=message) as e:
        GrowthManager(log=None, **args, **FAST)
    assert "\n" not in str(e.value)


def test_parallel_replaces_strategy_for_data_parallelism():
    target = preset("micro", vocab_size=VOCAB, seq_len=SEQ)
    with pytest.raises(ConfigError, match="strategy='ddp' is data parallelism: pass parallel='ddp'"):
        GrowthManager(target, "g_stack", budget_tokens=10_000, strategy="ddp")
    with pytest.raises(ConfigError, match="parallel='zero' is not allowed; choose one of 'ddp', 'fsdp'"):
        GrowthManager(target, "g_stack", budget_tokens=10_000, parallel="zero")
    with pytest.raises(ConfigError, match="give either model="):
        GrowthManager(target, model=small_gpt(), target_size="100K", budget="1M tokens")


# ---------------------------------------------------------------------------- data adapter
def test_iterable_adapter_reads_pairs_dicts_and_skips_to_a_step():
    data = windows(64)
    pairs = [(b[:, :-1], b[:, 1:]) for b in data.split(8)]
    dicts = [{"input_ids": b} for b in data.split(8)]
    for source in (pairs, dicts, DataLoader(data, batch_size=8)):
        adapter = IterableTokens(source, VOCAB)
        x, y = adapter.batch(0, 4, SEQ, seed=0)
        assert torch.equal(x, data[:4, :-1]) and torch.equal(y, data[:4, 1:])
    # a row of SEQ + 1 tokens gives two windows of SEQ // 2 (a shorter-context stage reads the same tokens)
    x, _ = IterableTokens(pairs, VOCAB).batch(0, 4, SEQ // 2, seed=0)
    assert torch.equal(x[1], data[0, SEQ // 2:SEQ])
    # a later step (a resumed run) skips the rows of the steps before it
    sequential = IterableTokens(pairs, VOCAB)
    expected = [sequential.batch(step, 8, SEQ, seed=0) for step in range(4)][3]
    assert torch.equal(IterableTokens(pairs, VOCAB).batch(3, 8, SEQ, seed=0)[0], expected[0])
    with pytest.raises(ConfigError, match="y = x shifted by one token"):
        IterableTokens([(data[:4, :-1], data[:4, :-1])], VOCAB)
    with pytest.raises(ConfigError, match="token id 64, outside the model's vocabulary"):
        IterableTokens([data + 1], VOCAB)
    one_shot = IterableTokens(iter([data[:8]]), VOCAB)
    one_shot.batch(0, 8, SEQ)
    with pytest.raises(ConfigError, match="train_data ran out of batches and cannot start again"):
        one_shot.batch(1, 8, SEQ)
    with pytest.raises(ConfigError, match=r"seq_len=32 needs rows of at least 32 tokens: use rows of \[B, 33\]"):
        IterableTokens([data], VOCAB).check_seq_len(32)


# ------------------------------------------------------------------ compare and export (HF)
@pytest.fixture
def text_dir(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "growing", "models"]
    for f in range(4):
        lines = [" ".join(words[(i * 7 + j * 3 + f) % len(words)] for j in range(12)) for i in range(100)]
        (root / f"doc{f}.txt").write_text("\n".join(lines), encoding="utf-8")
    return root


def test_compare_with_an_hf_config_runs_and_its_runs_export_to_hf(text_dir, tmp_path, capsys):
    import transformers as T

    from transformer_grow.hf import hf_logits
    from transformer_grow.train.checkpoint import load_checkpoint, model_from_checkpoint

    llama = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 256, "max_position_embeddings": 32}
    out = tmp_path / "cmp"
    code = main(["compare", "--hf-config", json.dumps(llama), "--budget-tokens", str(40 * 4 * 32), "--batch-size", "4",
                 "--warmup-steps", "3", "--device", "cpu", "--plans", "g_stack", "--growth-fraction", "0.3",
                 "--n-evals", "2", "--eval-windows", "4", "--no-controls", "--corpus", str(text_dir),
                 "--tokenizer", "bytes", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["scratch", "g_stack"]
    assert report["runs"][1]["stages"][0]["model"].startswith("L=1 d=32 heads=4x8")
    assert "FLOPs speedup" in capsys.readouterr().out
    run = out / "runs" / "seed0" / "g_stack"
    assert json.loads((run / "result.json").read_text())["hf_family"]["hf_class"] == "LlamaForCausalLM"

    exported = tmp_path / "hf"
    assert main(["hf", "export", str(run), "--out", str(exported)]) == 0
    reloaded = T.AutoModelForCausalLM.from_pretrained(exported)
    ours = model_from_checkpoint(load_checkpoint(run)).eval()
    assert type(reloaded).__name__ == "LlamaForCausalLM" and reloaded.config.num_hidden_layers == 2
    x = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (hf_logits(reloaded, x) - ours(x).logits).abs().max() <= 1e-5
    assert json.loads((exported / "export_record.json").read_text())["max_abs_dlogits"] <= 1e-5
    # a family that does not fit the run's recorded one is refused
    assert main(["hf", "export", str(out / "runs" / "seed0" / "scratch"), "--out", str(tmp_path / "x"),
                 "--family", "gpt2"]) == 2
    assert "does not fit it" in capsys.readouterr().err


def test_compare_refuses_model_flags_next_to_an_hf_config(capsys):
    code = main(["compare", "--hf-config", '{"model_type": "llama"}', "--n-layer", "4", "--out", "unused"])
    assert code == 2
    assert "--hf-config gives the whole target; drop --n-layer" in capsys.readouterr().err

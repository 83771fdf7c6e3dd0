"""BERT through our model: the encoder variants of GPT (bidirectional, post-LN, token types, embedding
norm, MLM head), BertForMaskedLM <-> GPT at fp32 tolerance, which growth operators stay exact under
post-LN, the masked-LM objective (train/mlm.py) in the trainer and the growth manager, and the CLI.
Tiny random BERTs built from configs (no downloads), briefly trained with their own MLM loss."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from grow_fixtures import single_thread  # noqa: F401  (autouse: one intra-op thread)
from torch.utils.data import DataLoader

from transformer_grow.cli.main import main
from transformer_grow.errors import ConfigError
from transformer_grow.hf import FamilyInfo, from_hf, grow_hf, hf_logits, save_grown, to_hf
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.operators import grow
from transformer_grow.operators.report import EXACT_TOL
from transformer_grow.train.config import TrainConfig
from transformer_grow.train.mlm import MaskedLM, evaluate_masked, masked_lm_for

pytestmark = pytest.mark.filterwarnings("ignore::transformer_grow.plans.timing.GrowthTimingWarning")  # tiny budgets

VOCAB, SEQ, TOL = 96, 16, 1e-5
BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
            max_position_embeddings=SEQ, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# Our GPT as BERT: what from_hf reads from BERT's config.
ENCODER = dict(n_layer=2, d_model=32, n_head=4, d_ff=64, vocab_size=VOCAB, seq_len=SEQ, norm="layernorm",
               norm_eps=1e-12, pos="learned", mlp="gelu_erf", bias=True, scale_residual_init=False, causal=False,
               norm_placement="post", type_vocab_size=2, emb_norm=True, head="mlm")


@functools.cache
def trained_bert(tie: bool = True, act: str = "gelu"):
    """A tiny BertForMaskedLM after a few MLM steps (cached; do not modify it)."""
    torch.manual_seed(0)
    model = T.BertForMaskedLM(T.BertConfig(**BERT, tie_word_embeddings=tie, hidden_act=act))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mlm, g = MaskedLM(VOCAB - 1, VOCAB - 1), torch.Generator().manual_seed(1)
    for step in range(4):
        x = torch.randint(0, VOCAB - 1, (4, SEQ), generator=g)
        inputs, targets = mlm.train_batch(x, step, seed=0)
        types = torch.randint(0, 2, x.shape, generator=g)
        model(input_ids=inputs, token_type_ids=types, labels=targets.masked_fill(targets < 0, -100)).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def tokens(batch: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def windows(n: int = 96) -> torch.Tensor:
    """``[n, SEQ + 1]`` windows with learnable structure: progressions over 8 ids (never the [MASK] id)."""
    base = torch.arange(SEQ + 1)
    return torch.stack([(base * (i % 5 + 1) + i) % 8 for i in range(n)])


class Windows:
    """Token data over fixed windows: ``batch`` a pure function of (seed, step), as our TokenData."""

    vocab_size, fingerprint = VOCAB - 1, "bert-windows"

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def batch(self, step, batch_size, seq_len, seed):
        g = torch.Generator().manual_seed(seed * 7919 + step)
        w = self.rows[torch.randint(0, len(self.rows) - 16, (batch_size,), generator=g)]
        return w[:, :-1], w[:, 1:]

    def val_windows(self, seq_len, n):
        return self.rows[-n:]

    def check_seq_len(self, seq_len):
        pass


# ----------------------------------------------------------------------------------- model variants
def test_defaults_keep_the_decoder_and_bad_values_are_refused():
    cfg = ModelConfig()
    assert (cfg.causal, cfg.norm_placement, cfg.type_vocab_size, cfg.emb_norm, cfg.head) == (True, "pre", 0, False,
                                                                                          "linear")
    gpt = GPT(ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=64, seq_len=16))
    assert gpt.type_emb is None and gpt.emb_norm is None and gpt.mlm_head is None and gpt.norm_f is not None
    for bad, words in [(dict(norm_placement="side"), "norm_placement='side'"), (dict(head="pooler"), "head='pooler'"),
                       (dict(type_vocab_size=-1), "type_vocab_size=-1"), (dict(causal="no"), "causal='no'"),
                       (dict(mlp="relu"), "gelu_erf")]:
        with pytest.raises(ConfigError, match=words):
            ModelConfig(**bad)
    with pytest.raises(ConfigError, match="causal cannot change by growth"):
        grow(GPT(ModelConfig(**ENCODER)), ModelConfig(**{**ENCODER, "causal": True, "n_layer": 3}))


def test_hf_gelu_is_the_exact_erf_gelu_and_ours_matches():
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 1001)
    exact = 0.5 * x * (1 + torch.erf(x / 2**0.5))  # Hendrycks & Gimpel 2016, eq. 1
    assert (ACT2FN["gelu"](x) - exact).abs().max() < 1e-6
    assert (ACT2FN["gelu_new"](x) - exact).abs().max() > 1e-4  # the tanh approximation differs visibly
    gpt = GPT(ModelConfig(**ENCODER))
    mlp = gpt.blocks["0"].mlp
    h = torch.randn(2, 5, 32)
    assert torch.allclose(mlp(h), mlp.down_proj(ACT2FN["gelu"](mlp.up_proj(h))), atol=1e-6)


def test_attention_is_bidirectional_and_post_norm_ends_normed():
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(**ENCODER)).eval()
    causal = GPT(ModelConfig(**{**ENCODER, "causal": True})).eval()
    causal.load_state_dict(gpt.state_dict())
    x = tokens(1)
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % VOCAB  # change only the last token
    with torch.no_grad():
        assert (gpt(x).logits[0, 0] - gpt(y).logits[0, 0]).abs().max() > 1e-4  # the first position sees it
        assert torch.equal(causal(x).logits[0, :-1], causal(y).logits[0, :-1])  # a causal one does not
        # post-LN by hand: LN(x + attn(x)), then LN(h + ffn(h)); no final norm before the MLM head
        block, h = gpt.blocks["0"], torch.randn(2, SEQ, 32)
        mid = block.attn_norm(h + block.attn(h, None))
        assert torch.allclose(block(h, None), block.mlp_norm(mid + block.mlp(mid)))
        assert gpt.norm_f is None


def test_token_types_default_to_segment_zero():
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(**ENCODER)).eval()
    x = tokens()
    with torch.no_grad():
        assert torch.equal(gpt(x).logits, gpt(x, token_type_ids=torch.zeros_like(x)).logits)
        assert (gpt(x).logits - gpt(x, token_type_ids=torch.ones_like(x)).logits).abs().max() > 1e-4
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        GPT(ModelConfig(**{**ENCODER, "type_vocab_size": 0}))(x, token_type_ids=torch.zeros_like(x))


def test_mlm_head_flops_and_parameter_counts_by_hand():
    d, V, L, T_ = 32, VOCAB, 2, SEQ
    mlm, linear = GPT(ModelConfig(**ENCODER)), GPT(ModelConfig(**{**ENCODER, "head": "linear"}))
    head = d * d + d + 2 * d + V  # dense weight and bias, its LayerNorm, the vocabulary bias
    assert mlm.num_params() - linear.num_params() == head
    emb = V * d + T_ * d + 2 * d  # token, position and token-type embeddings are not counted
    block = 4 * (d * d + d) + 2 * (d * 64) + 64 + d + 2 * 2 * d
    assert mlm.num_params() == 2 * d + L * block + head  # + the embedding LayerNorm
    assert mlm.num_params(non_embedding=False) == mlm.num_params() + emb
    assert mlm.flops_per_token() - linear.flops_per_token() == 6 * head  # 6 d^2 of the dense, and its small terms
    assert linear.flops_per_token() == 6 * linear.num_params() + 6 * d * V + 6 * L * T_ * d


# --------------------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("tie, act", [(True, "gelu"), (False, "gelu"), (True, "gelu_new")])
def test_bert_round_trip_is_exact_both_ways(tie, act):
    model = trained_bert(tie, act)
    gpt, info = from_hf(model)
    mlp = "gelu_erf" if act == "gelu" else "gelu"
    assert gpt.config == ModelConfig(**{**ENCODER, "tie_embeddings": tie, "mlp": mlp, "init_std": 0.02, "dropout": 0.0})
    x, types = tokens(), torch.randint(0, 2, (3, SEQ), generator=torch.Generator().manual_seed(2))
    gpt.eval()
    with torch.no_grad():
        assert (hf_logits(model, x) - gpt(x).logits).abs().max() <= TOL  # full length, token types 0
        theirs = model(input_ids=x, token_type_ids=types).logits
        assert (theirs - gpt(x, token_type_ids=types).logits).abs().max() <= TOL
        back = to_hf(gpt, info).eval()
        assert type(back) is T.BertForMaskedLM and back.config.tie_word_embeddings == tie
        assert (back(input_ids=x, token_type_ids=types).logits - theirs).abs().max() <= TOL
    # the bias the decoder actually uses is ours (untied: the decoder's own bias)
    used = model.cls.predictions.decoder.bias
    assert torch.equal(gpt.mlm_head.bias.detach(), used.detach()) and used.abs().max() > 0


def test_a_bert_trained_here_exports_exactly():
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(**ENCODER)).eval()
    model = to_hf(gpt, FamilyInfo.new("bert", gpt.config))
    x = tokens()
    with torch.no_grad():
        assert (hf_logits(model, x) - gpt(x).logits).abs().max() <= TOL
    assert from_hf(model)[0].config.to_dict() == gpt.config.to_dict()


# ------------------------------------------------------------------------------------------- growth
def test_insert_zero_is_exact_pre_ln_and_declared_none_post_ln():
    torch.manual_seed(0)
    pre = GPT(ModelConfig(**{**ENCODER, "norm_placement": "pre"}))
    assert grow(pre, {"n_layer": 3}, depth="insert_zero").report.kind == "exact"  # x + 0 (raises if not)
    report = grow(GPT(ModelConfig(**ENCODER)), {"n_layer": 3}, depth="insert_zero").report
    assert report.kind == "none" and any("norm(norm(x))" in n for s in report.steps for n in s.notes)


def test_grown_bert_saves_and_reloads_with_auto_masked_lm(tmp_path):
    model = trained_bert(False)
    growth = grow_hf(model, {"d_model": 64}, width="clone")
    p = growth.record["preservation"]
    assert p["kind"] == "exact" and p["max_abs_dlogits"] <= EXACT_TOL
    assert growth.record["grown_class"] == "BertForMaskedLM"
    record = save_grown(growth, tmp_path / "grown")
    assert record["reload_class"] == "BertForMaskedLM" and record["reload_max_abs_dlogits"] <= TOL
    reloaded = T.AutoModelForMaskedLM.from_pretrained(tmp_path / "grown")
    x = tokens()
    with torch.no_grad():
        ours = growth.result.model.eval()(x).logits
    assert reloaded.config.hidden_size == 64 and (hf_logits(reloaded, x) - ours).abs().max() <= TOL


def test_cli_hf_check_measures_which_operators_are_exact_under_post_ln(tmp_path, capsys):
    trained_bert().save_pretrained(tmp_path / "src")
    assert main(["hf", "check", str(tmp_path / "src"), "--json", str(tmp_path / "check.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "exact" in next(x for x in lines if "width=clone" in x)
    assert " none " in next(x for x in lines if "depth=insert_zero" in x)
    checks = {c["operator"]: c for c in json.loads((tmp_path / "check.json").read_text())["operators"]}
    for op in ("width=clone", "ffn=zero", "ffn=split", "seq=copy"):  # exact by construction, and measured so
        assert checks[op]["kind"] == "exact" and checks[op]["max_abs_dlogits"] <= EXACT_TOL, op
    # a zero-writer block computes LN(LN(x)) under post-LN: declared not exact, and measurably not
    for op in ("depth=insert_zero", "depth=stack"):
        assert checks[op]["kind"] == "none" and checks[op]["max_abs_dlogits"] > 1e-3, op
    assert "width=clone" in checks["heads=zero"]["refused"]  # BERT attention is hidden_size wide
    assert all(c["grown_class"] in (None, "BertForMaskedLM") for c in checks.values())


def test_cli_grow_hf_bert(tmp_path):
    trained_bert().save_pretrained(tmp_path / "src")
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"model": {"d_ff": 128}}))
    out = tmp_path / "grown"
    assert main(["grow", "--hf", str(tmp_path / "src"), "--to", str(target), "--ffn", "split", "--out", str(out)]) == 0
    grown = T.AutoModelForMaskedLM.from_pretrained(out)
    x = tokens()
    assert grown.config.intermediate_size == 128
    assert (hf_logits(grown, x) - hf_logits(trained_bert(), x)).abs().max() <= EXACT_TOL


# ---------------------------------------------------------------------------------------- objective
def test_masking_follows_the_bert_recipe_and_is_seeded():
    mlm = MaskedLM(mask_token_id=VOCAB - 1, vocab_size=VOCAB - 1)
    x = torch.randint(0, VOCAB - 1, (64, 256), generator=torch.Generator().manual_seed(0))
    inputs, targets = mlm.train_batch(x, step=3, seed=7)
    chosen = targets != -1
    assert torch.equal(targets[chosen], x[chosen])  # the originals, at chosen positions only
    assert torch.equal(inputs[~chosen], x[~chosen])  # unchosen inputs untouched
    n = int(chosen.sum())
    assert abs(n / x.numel() - 0.15) < 0.01
    masked = (inputs == VOCAB - 1) & chosen
    kept = (inputs == x) & chosen  # includes the few random draws that hit the original token
    assert abs(int(masked.sum()) / n - 0.8) < 0.02 and abs(int(kept.sum()) / n - 0.1) < 0.02
    assert abs(int((chosen & ~masked & ~kept).sum()) / n - 0.1 * (1 - 1 / (VOCAB - 1))) < 0.02
    again = mlm.train_batch(x, step=3, seed=7)
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)  # resume draws the same masks
    assert not torch.equal(mlm.train_batch(x, step=4, seed=7)[1], targets)
    assert (mlm.mask(x[:1, :2], torch.Generator().manual_seed(0))[1] != -1).sum() >= 1  # never nothing to predict


def test_objective_resolution_and_refusals():
    enc, dec = ModelConfig(**ENCODER), ModelConfig(**{**ENCODER, "causal": True})
    assert masked_lm_for("auto", None, 0.15, dec, VOCAB) is None
    assert masked_lm_for("auto", None, 0.15, enc, VOCAB - 1) == MaskedLM(VOCAB - 1, VOCAB - 1, 0.15)
    with pytest.raises(ConfigError, match="objective='clm' needs a causal model"):
        masked_lm_for("clm", None, 0.15, enc, VOCAB)
    with pytest.raises(ConfigError, match="objective='mlm' needs a bidirectional model"):
        masked_lm_for("mlm", None, 0.15, dec, VOCAB)
    with pytest.raises(ConfigError, match="set mask_token_id"):  # the default [MASK] id is a data token
        masked_lm_for("auto", None, 0.15, enc, VOCAB)
    with pytest.raises(ConfigError, match="mask_token_id=96 is not in the model's vocabulary"):
        masked_lm_for("auto", VOCAB, 0.15, enc, VOCAB)
    for bad in (dict(objective="nsp"), dict(mlm_probability=1.0), dict(mask_token_id=-1)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig(max_steps=1, **bad)


def test_masked_evaluation_is_fixed_and_equals_the_hand_computed_loss():
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(**ENCODER))
    mlm, rows = MaskedLM(VOCAB - 1, VOCAB - 1), windows(10)
    loss = evaluate_masked(gpt, rows, 4, torch.device("cpu"), mlm)
    inputs, targets = mlm.eval_batch(rows)
    with torch.no_grad():
        logits = gpt.eval()(inputs).logits
    chosen = targets != -1
    assert loss == pytest.approx(float(F.cross_entropy(logits[chosen], targets[chosen])), abs=1e-5)
    assert evaluate_masked(gpt, rows, 3, torch.device("cpu"), mlm) == pytest.approx(loss, abs=1e-5)  # any batching


def test_trainer_trains_a_bidirectional_model_by_masked_lm():
    from transformer_grow.train.trainer import Trainer

    data, cfg = Windows(windows()), TrainConfig(batch_size=8, max_steps=60, lr=3e-3, warmup_steps=5,
                                                eval_interval=0, device="cpu")
    trainer = Trainer(ModelConfig(**ENCODER), cfg, data)
    assert trainer.objective == MaskedLM(VOCAB - 1, VOCAB - 1)
    # step 1's loss is the cross-entropy of the masked batch at its chosen positions
    model0 = GPT(ModelConfig(**ENCODER))
    model0.load_state_dict(trainer.model.state_dict())
    x, _ = data.batch(0, 8, SEQ, cfg.seed)
    inputs, targets = trainer.objective.train_batch(x, 0, cfg.seed)
    with torch.no_grad():
        expected = float(model0(inputs, targets).loss)
    assert trainer.train_steps(1) == pytest.approx(expected, abs=1e-5)
    start = trainer.evaluate()
    assert start == pytest.approx(evaluate_masked(trainer.model, data.val_windows(SEQ, 64), 8,
                                                  torch.device("cpu"), trainer.objective), abs=1e-6)
    trainer.fit()
    assert trainer.last_val_loss < start - 0.5  # it learned to fill in the masks
    with pytest.raises(ConfigError, match="objective='clm' needs a causal model"):
        Trainer(ModelConfig(**ENCODER), cfg.replace(objective="clm"), data)


def test_growth_manager_trains_and_grows_a_hf_bert(tmp_path):
    from transformer_grow import GrowthManager

    rows = windows(160)
    model = trained_bert()
    train = TrainConfig(batch_size=8, lr=3e-3, warmup_steps=2, max_steps=1, device="cpu", mask_token_id=VOCAB - 1)
    manager = GrowthManager(model=model, strategy="g_stack", target_size={"n_layer": 4, "n_head": 4, "d_ff": 64},
                            budget="12K tokens", train_config=train, n_evals=2, eval_windows=8, log=None,
                            out_dir=tmp_path / "run")
    large = manager.grow_and_train(DataLoader(rows[:-16], batch_size=8), DataLoader(rows[-16:], batch_size=4))
    assert type(large) is T.BertForMaskedLM and large.config.num_hidden_layers == 4
    event = manager.result.record.events[0]
    assert event["operator"] == "depth=stack" and event["kind"] == "none"
    assert manager.trainer.objective == MaskedLM(VOCAB - 1, VOCAB)  # trained by masked LM (loader: model vocab)
    # the run exports as a BertForMaskedLM giving our logits
    assert main(["hf", "export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    record = json.loads((tmp_path / "hf" / "export_record.json").read_text())
    assert record["hf_class"] == "BertForMaskedLM" and record["max_abs_dlogits"] <= EXACT_TOL


def test_growth_manager_validates_a_bert_by_masked_lm():
    from transformer_grow import GrowthManager

    rows = windows(160)
    train = TrainConfig(batch_size=8, lr=3e-3, warmup_steps=2, max_steps=1, device="cpu", mask_token_id=VOCAB - 1)
    manager = GrowthManager(model=trained_bert(), strategy="g_stack", target_size={"n_layer": 4, "n_head": 4,
                                                                                  "d_ff": 64},
                            budget="12K tokens", train_config=train, n_evals=2, eval_windows=8, log=None)
    manager.grow_and_train(DataLoader(rows[:-16], batch_size=8), DataLoader(rows[-16:], batch_size=4))
    first = manager.result.record.curve[0].val_loss
    gpt, _ = from_hf(trained_bert())
    expected = evaluate_masked(gpt, rows[-16:][:8], 8, torch.device("cpu"), MaskedLM(VOCAB - 1, VOCAB - 1))
    # fp32 sums over other batch splits differ in the last digits; next-token loss would be off by far more
    assert first == pytest.approx(expected, abs=1e-4)

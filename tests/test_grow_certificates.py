"""Growth certificates that cannot mislead.

The report's max |dlogits| is a certificate of preservation. These tests plant the defects it must see:
a defect past position 64 (the old default probe was 64 tokens), a corrupted "exact" operator (the
declared kind is checked against the measurement), a caller's bf16 autocast (the report stays fp32),
a model in train mode with dropout (the report evaluates in eval mode), and a partial dict target
(completed from the model, never from ModelConfig defaults).
"""

import pytest
import torch
from grow_fixtures import corpus, probe, single_thread, train, trained  # noqa: F401

from transformer_grow import operators as G
from transformer_grow.errors import ConfigError
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.operators import build
from transformer_grow.operators.report import GrowthCertificateError

LONG = 96  # > 64: the length the old default probe stopped at


def windows(n: int, length: int, seed: int = 0) -> torch.Tensor:
    """``[n, length + 1]`` windows of real text from the held-out tail of the fixture corpus."""
    data = corpus()
    cut = int(0.9 * len(data))
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(cut, len(data) - length - 1, (n,), generator=g)
    return torch.stack([data[s : s + length + 1] for s in starts.tolist()])


def long_model(**kw) -> GPT:
    """A small learned-position model with MQA (n_kv_head=1), dropout and seq_len 96, briefly trained
    on real text and left in *train* mode (dropout active) as a trainer would hand it over."""
    config = ModelConfig(
        **{
            "n_layer": 2,
            "d_model": 32,
            "n_head": 4,
            "n_kv_head": 1,
            "vocab_size": 256,
            "seq_len": LONG,
            "pos": "learned",
            "norm": "layernorm",
            "mlp": "gelu",
            "dropout": 0.1,
            **kw,
        }
    )
    torch.manual_seed(0)
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(30):
        w = windows(8, LONG, seed=step + 1)
        loss = model(w[:, :-1], w[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.train()


def corrupt_after_build(monkeypatch, corrupt) -> None:
    """Plant a defect: every grown model is corrupted by ``corrupt(model)`` right after it is built."""
    materialize = build.materialize

    def planted(new, old, param_map, adapter, seed):
        materialize(new, old, param_map, adapter, seed)
        with torch.no_grad():
            corrupt(new)

    monkeypatch.setattr(build, "materialize", planted)


def test_default_probe_is_full_length_random_tokens():
    model = long_model()
    result = G.insert_zero(model, n_new=1)
    assert result.report.probe["source"] == "seeded random"
    assert result.report.probe["shape"] == [4, LONG] and result.report.probe["full_length"]
    assert result.report.kind == "exact" and result.report.max_abs_dlogits <= 1e-4


@pytest.mark.parametrize("entry", ["operator", "grow"])
def test_defect_past_position_64_is_caught_by_the_default_probe(entry, monkeypatch):
    model = long_model()
    grow = {
        "operator": lambda m, **kw: G.insert_zero(m, n_new=1, **kw),
        "grow": lambda m, **kw: G.grow(m, {"n_layer": 3}, depth="insert_zero", **kw),
    }[entry]
    assert grow(model).report.max_abs_dlogits <= 1e-4  # the operator itself is exact

    def late_positions(new):
        row = new.pos_emb.weight[80]  # only position 80 changes (not by a constant: LayerNorm removes that)
        row += torch.linspace(-1.0, 1.0, row.numel())

    corrupt_after_build(monkeypatch, late_positions)
    # A 64-token probe cannot see it: this is what the old default certified as exact.
    w = windows(4, LONG)
    short = grow(model, probe=(w[:, :64], w[:, 1:65]))
    assert short.report.max_abs_dlogits == 0.0
    assert any("covers positions 0..63 of seq_len=96" in n for n in short.report.notes)
    # The default probe covers all 96 positions: the report shows the defect and "exact" is refused.
    measured = grow(model, exact_tol=None).report
    assert measured.kind == "exact" and measured.max_abs_dlogits > 1e-2
    with pytest.raises(GrowthCertificateError, match="declared 'exact'") as caught:
        grow(model)
    assert caught.value.report.max_abs_dlogits == pytest.approx(measured.max_abs_dlogits)
    # Real validation windows at full length, given as one token tensor, see it too.
    with pytest.raises(GrowthCertificateError):
        grow(model, probe=w)


def test_corrupted_clone_declared_exact_raises_with_the_numbers(monkeypatch):
    old = trained("rms_swiglu_rope_untied_gqa")
    assert G.clone(old, 2, probe=probe()).report.max_abs_dlogits <= 1e-4

    def nudge(new):
        new.blocks["1"].mlp.down_proj.weight[0, 0] += 0.05

    corrupt_after_build(monkeypatch, nudge)
    with pytest.raises(GrowthCertificateError, match=r"clone: max\|dlogits\|=.*exceeds exact_tol=0.0001"):
        G.clone(old, 2, probe=probe())
    with pytest.raises(GrowthCertificateError, match=r"width=clone: max\|dlogits\|="):
        G.grow(old, {"d_model": 64}, probe=probe())
    assert issubclass(GrowthCertificateError, ConfigError)  # one clear line in the CLI, exit code 2
    # The same corruption on an operator declared approximate is reported, not refused.
    approx = G.clone(old, 2, noise="plain", probe=probe())
    assert approx.report.kind == "approximate" and approx.report.max_abs_dlogits > 1e-3
    # A tolerance is a setting: bad values are refused.
    with pytest.raises(ConfigError, match="exact_tol"):
        G.clone(old, 2, probe=probe(), exact_tol=-1.0)


def test_report_is_fp32_inside_a_bf16_autocast_context():
    old = trained("rms_swiglu_rope_untied_gqa")
    precision = torch.get_float32_matmul_precision()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = G.clone(old, 3, probe=probe())
        assert torch.is_autocast_enabled("cpu")  # the caller's context is restored
        with torch.no_grad():  # what a bf16 "measurement" would have said: the test can fail
            bf16 = (result.model(probe()[0]).logits.float() - old(probe()[0]).logits.float()).abs().max()
    assert torch.get_float32_matmul_precision() == precision
    assert float(bf16) > 1e-3
    assert result.report.max_abs_dlogits <= 1e-4


def test_report_evaluates_in_eval_mode_and_restores_train_mode():
    model = long_model()
    assert model.training and model.config.dropout > 0
    result = G.clone(model, 2, probe=windows(4, LONG))
    assert result.report.probe == {"source": "given", "shape": [4, LONG], "full_length": True}
    assert result.report.max_abs_dlogits <= 1e-4  # with dropout active two forwards differ by O(1)
    assert model.training and result.model.training
    with torch.no_grad():
        x = windows(4, LONG)[:, :-1]
        assert float((model(x).logits - model(x).logits).abs().max()) > 1e-2  # dropout is really on


def test_context_growth_probes_the_new_length_with_the_given_windows():
    model = long_model()
    w = windows(4, 2 * LONG)  # longer than the old model: cut for the comparison, whole for the new length
    result = G.grow(model, {"seq_len": 2 * LONG}, seq="copy", probe=w)
    report = result.report
    assert report.kind == "exact" and report.max_abs_dlogits <= 1e-4
    assert report.probe["shape"] == [4, LONG]
    new_length = report.probe["new_length"]
    assert new_length["source"] == "given" and new_length["shape"] == [4, 2 * LONG]
    with torch.no_grad():
        result.model.eval()
        expected = float(result.model(w[:, :-1], w[:, 1:]).loss)
    assert new_length["loss_new"] == pytest.approx(expected, rel=1e-5)
    # Without data the new length is probed with random tokens, still at full length.
    assert G.grow_seq(model, 2 * LONG).report.probe["new_length"]["shape"] == [4, 2 * LONG]


def test_interpolated_positions_are_approximate_at_the_old_length():
    model = long_model()
    report = G.grow_seq(model, 2 * LONG, "interpolate", probe=windows(4, LONG)).report
    assert report.kind == "approximate" and report.max_abs_dlogits > 1e-2  # old positions moved


def test_probe_tensor_is_validated():
    model = long_model()
    with pytest.raises(ConfigError, match="token windows"):
        G.insert_zero(model, n_new=1, probe=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ConfigError, match="integer token ids"):
        G.insert_zero(model, n_new=1, probe=torch.zeros(2, 10))
    with pytest.raises(ConfigError, match=r"\[0, 256\)"):
        G.insert_zero(model, n_new=1, probe=torch.full((2, 10), 999))


def test_partial_dict_target_is_completed_from_the_model():
    source = long_model(d_model=48, n_head=6, n_kv_head=2, d_ff=96, rope_base=500.0).config
    assert G.target_config(source, {"n_layer": 8}) == source.replace(n_layer=8)
    assert G.target_config(source, {"seq_len": 128}) == source.replace(seq_len=128)
    wider = G.target_config(source, {"d_model": 96})  # heads keep their width, GQA its group, d_ff its ratio
    assert (wider.d_model, wider.n_head, wider.head_dim, wider.n_kv_head, wider.d_ff) == (96, 12, 8, 4, 192)
    kept = (wider.pos, wider.norm, wider.mlp, wider.seq_len, wider.vocab_size, wider.rope_base, wider.dropout)
    assert kept == ("learned", "layernorm", "gelu", LONG, 256, 500.0, 0.1)
    named = G.target_config(source, {"d_model": 96, "n_head": 6, "d_ff": 100})  # what is named is kept
    assert (named.n_head, named.head_dim, named.n_kv_head, named.d_ff) == (6, 8, 2, 100)
    assert G.target_config(source, {"n_head": 9}).n_kv_head == 3
    with pytest.raises(ConfigError, match="unknown model setting"):
        G.target_config(source, {"n_layers": 8})


def test_partial_dict_grows_only_what_it_names():
    model = long_model()
    result = G.grow(model, {"n_layer": 4}, depth="insert_zero")
    assert result.model.config == model.config.replace(n_layer=4)
    assert result.report.method == "depth=insert_zero" and result.report.kind == "exact"
    assert result.report.max_abs_dlogits <= 1e-4
    wider = G.grow(model, {"d_model": 64}, probe=windows(4, LONG))
    assert wider.report.method == "width=clone" and wider.report.kind == "exact"
    assert (wider.model.config.n_head, wider.model.config.n_kv_head, wider.model.config.head_dim) == (8, 2, 8)
    assert any("partial target" in n and "n_head=8" in n for n in wider.report.notes)

"""Dynamics-preserving growth: after growth, AdamW on the grown model retraces the small model.

Each trajectory test trains a small model a few AdamW steps (so its moments are real), grows it, then
trains both on the same batches and compares the grown parameters with the small ones mapped through
the parameter map after every step, as a fraction of that step's size (fp32). ``preserve="dynamics"``
(moments in the gradient scale, LR multipliers = value scale) must stay within ``TOL`` of a step
and its logits within ``LOGITS_TOL``; ``preserve="function"`` must not (so the check can fail).

What remains in dynamics mode is measured, not hidden: eps acts as eps/s_g (test below), and
parameters whose exact gradient is zero (a key bias: softmax is shift-invariant; a zero router over
identical experts) get rounding noise that Adam normalises into real steps, differently in the two
models. Measured over 8 steps (eps=1e-8): clone 1e-4 .. 7e-3 of a step (7e-3: LayerNorm models with
key biases), FFN split 6e-4 .. 2e-3, logits <= 2e-5 relative; function mode 1.8 .. 14 steps off.
"""

from __future__ import annotations

import math

import pytest
import torch
from grow_fixtures import single_thread  # noqa: F401

from transformer_grow import operators as G
from transformer_grow.errors import ConfigError
from transformer_grow.model import GPT, ModelConfig
from transformer_grow.operators.dynamics import dynamics_scales, lr_multipliers
from transformer_grow.operators.optimizer import grow_optimizer_state, handoff
from transformer_grow.optim_state import decays, load_optimizer_state_by_name, optimizer_state_by_name
from transformer_grow.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from transformer_grow.train.optim import LRMultipliers, Relax, adamw_step

SEQ, VOCAB = 16, 64
WARM, STEPS = 12, 8
TOL = 2e-2
LOGITS_TOL = 1e-4

LN_TIED = {"norm": "layernorm", "mlp": "gelu", "pos": "learned", "tie_embeddings": True, "bias": True}
RMS_UNTIED = {"norm": "rmsnorm", "mlp": "swiglu", "pos": "rope", "tie_embeddings": False, "n_kv_head": 1}


def tiny(**extra) -> GPT:
    torch.manual_seed(0)
    base = {"n_layer": 2, "d_model": 16, "n_head": 2, "vocab_size": VOCAB, "seq_len": SEQ, "d_ff": 32}
    return GPT(ModelConfig(**{**base, **extra}))


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (4, SEQ + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def adamw(model: GPT, lr: float = 1e-2, eps: float = 1e-8) -> torch.optim.AdamW:
    """The trainer's AdamW: decayed matrices, undecayed vectors, fused kernel."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if decays(p)], "weight_decay": 0.1},
        {"params": [p for p in params if not decays(p)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=eps, fused=True)


def train_step(model, optimizer, seed, multipliers=None) -> None:
    x, y = batch(seed)
    out = model(x, y)
    loss = out.loss + model.config.moe_aux_loss_coef * out.aux_loss if model.config.n_expert else out.loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    adamw_step(optimizer, model, multipliers)


def mapped(small: GPT, result) -> dict[str, torch.Tensor]:
    return result.param_map.apply({n: p.detach() for n, p in small.named_parameters()})


def trajectory_gap(small: GPT, grow_fn, preserve: str, eps: float = 1e-8, extra=None) -> dict[str, float]:
    """Worst ``|grown - mapped small| / |mapped small step|`` over STEPS steps after growth, and the
    final max |logits| difference on a fixed batch at full seq_len (relative to max |logits|).
    ``extra(result)``: more LR multipliers to apply."""
    opt = adamw(small, eps=eps)
    for i in range(WARM):
        train_step(small, opt, i)
    result = grow_fn(small)
    big = result.model
    carried = handoff(result, optimizer_state_by_name(small, opt), preserve)
    opt_big = adamw(big, eps=eps)
    load_optimizer_state_by_name(big, opt_big, carried.optimizer_state)
    more = extra(result) if extra is not None else {}
    multipliers = LRMultipliers({**carried.lr_multipliers, **more}) if carried.lr_multipliers or more else None
    known = {n: ~e.new_mask() for n, e in result.param_map.items()}
    worst = 0.0
    for i in range(WARM, WARM + STEPS):
        before = mapped(small, result)
        train_step(small, opt, i)
        train_step(big, opt_big, i, multipliers)
        after = mapped(small, result)
        params = dict(big.named_parameters())
        off = sum(float(((params[n].detach() - after[n]) * known[n]).square().sum()) for n in after)
        size = sum(float(((after[n] - before[n]) * known[n]).square().sum()) for n in after)
        worst = max(worst, math.sqrt(off / size))
    with torch.no_grad():
        x, _ = batch(999)
        small_logits, big_logits = small(x).logits, big(x).logits
    return {"step": worst, "logits": float((big_logits - small_logits).abs().max() / small_logits.abs().max())}


CLONES = {
    f"clone{k}_{name}": (cfg, lambda m, k=k: G.clone(m, k, measure=False))
    for k in (2, 3)
    for name, cfg in (("ln_tied", LN_TIED), ("rms_untied", RMS_UNTIED))
}
SPLITS = {  # 32 -> 48 units: half the units are copied twice (s_v = 1/2 on their down columns only)
    f"ffn_split_{mlp}": ({**LN_TIED, "mlp": mlp}, lambda m: G.grow_ffn(m, 48, "split", measure=False))
    for mlp in ("gelu", "swiglu")
}
OTHERS = {
    "net2net_x2": (RMS_UNTIED, lambda m: G.net2net(m, 32, measure=False)),
    "grow_clone_then_split": (  # composed map: clone doubles d_ff to 64, split takes it to 80
        LN_TIED,
        lambda m: G.grow(m, m.config.replace(d_model=32, n_head=4, d_ff=80), ffn="split", measure=False),
    ),
}
EXACT = {**CLONES, **SPLITS, **OTHERS}


@pytest.mark.parametrize("case", sorted(EXACT))
def test_dynamics_mode_retraces_the_small_models_adamw_steps(case):
    config, grow_fn = EXACT[case]
    gap = trajectory_gap(tiny(**config), grow_fn, "dynamics")
    assert gap["step"] < TOL and gap["logits"] < LOGITS_TOL, gap


@pytest.mark.parametrize(
    "case,least",  # the measured gap after one step of the issue: clone 1.07 (k=2), 2.08 (k=3), split 0.56
    [("clone2_ln_tied", 0.5), ("clone3_rms_untied", 1.0), ("ffn_split_swiglu", 0.2), ("net2net_x2", 0.2)],
)
def test_function_mode_leaves_the_small_models_trajectory(case, least):
    config, grow_fn = EXACT[case]
    assert trajectory_gap(tiny(**config), grow_fn, "function")["step"] > least


UPCYCLE = {**RMS_UNTIED, "mlp": "gelu"}


def zero_router_all_experts(model):
    return G.upcycle(model, 4, top_k=4, router_init="zero", measure=False)


def frozen_routers(result):
    return {n: torch.tensor(0.0) for n in result.param_map if n.endswith("router.weight")}


def test_upcycling_is_exact_with_a_zero_router_over_all_experts_held_still():
    """top_k == n_expert and a zero router: every expert gets combine weight 1/E, so gradient G/E
    (moments x 1/E, multiplier 1), and the router's exact gradient is zero. In fp32 that zero is
    rounding noise (~1e-10) which Adam normalises into steps of ~lr/10: held still (multiplier 0, so
    the zero router only decays, staying zero) the trajectory is retraced; left free it drifts."""
    held = trajectory_gap(tiny(**UPCYCLE), zero_router_all_experts, "dynamics", extra=frozen_routers)
    assert held["step"] < TOL and held["logits"] < LOGITS_TOL, held
    free = trajectory_gap(tiny(**UPCYCLE), zero_router_all_experts, "dynamics")
    assert free["step"] > TOL  # measured 0.1 of a step, logits 6e-3
    function = trajectory_gap(tiny(**UPCYCLE), zero_router_all_experts, "function", extra=frozen_routers)
    assert function["step"] > 1.0  # measured 3.2


@pytest.mark.parametrize("router", ["random", "zero"])
def test_upcycling_with_top_k_below_n_expert_is_measured_not_exact(router):
    """Identical experts see w_e(x) * G with per-token combine weights, only the chosen ones at all:
    no common gradient scale exists, so 1/E moments cannot retrace the dense model (measured ~3.7-4
    steps off, no better than function mode)."""
    grow_fn = lambda m: G.upcycle(m, 4, top_k=2, router_init=router, measure=False)  # noqa: E731
    assert trajectory_gap(tiny(**UPCYCLE), grow_fn, "dynamics")["step"] > 1.0


def test_eps_is_the_only_remaining_deviation():
    """The grown direction is m/(sqrt(v) + eps/s_g): a large eps shows it; a small one hides it."""
    config, grow_fn = EXACT["clone3_rms_untied"]
    small_eps = trajectory_gap(tiny(**config), grow_fn, "dynamics", eps=1e-8)["step"]
    large_eps = trajectory_gap(tiny(**config), grow_fn, "dynamics", eps=1e-3)["step"]
    assert small_eps < TOL < large_eps


def test_scales_of_clone_match_the_derivation():
    for k, cfg in ((2, LN_TIED), (3, RMS_UNTIED)):
        result = G.clone(tiny(**cfg), k, measure=False)
        scales = dynamics_scales(result.param_map, result.model)
        expect = {  # name: (s_v, s_g)
            "blocks.0.attn.q_proj.weight": (1 / k, 1 / k),  # W/k blocks, r = k^2
            "blocks.0.mlp.down_proj.weight": (1 / k, 1 / k),
            "tok_emb.weight": (1.0, 1 / k),  # tiled columns, r = k
            "blocks.0.attn_norm.weight": (1.0, 1 / k),
        }
        if cfg["tie_embeddings"]:
            expect["norm_f.weight"] = (1 / k, 1.0)  # absorbs the head's 1/k, r = k
            expect["blocks.0.attn.q_proj.bias"] = (1.0, 1 / k)
        else:
            expect["norm_f.weight"] = (1.0, 1 / k)
            expect["lm_head.weight"] = (1 / k, 1.0)
        for name, (value, grad) in expect.items():
            s = scales[name]
            got_value = 1.0 if s.value is None else float(s.value)
            got_grad = 1.0 if s.grad is None else float(s.grad)
            assert math.isclose(got_value, value, rel_tol=1e-6) and math.isclose(got_grad, grad, rel_tol=1e-6), name


def test_composed_clones_scale_like_one_clone():
    model = tiny(**RMS_UNTIED)
    twice = G.clone(G.clone(model, 2, measure=False).model, 2, measure=False)
    first = G.clone(model, 2, measure=False)
    composed = twice.param_map.compose(first.param_map)
    once = G.clone(model, 4, measure=False)
    a, b = dynamics_scales(composed, twice.model), dynamics_scales(once.param_map, once.model)
    for name in b:
        for field in ("value", "grad"):
            x, y = getattr(a[name], field), getattr(b[name], field)
            assert (x is None) == (y is None), (name, field)
            if x is not None:
                torch.testing.assert_close(x, y, msg=f"{name}.{field}")


@pytest.mark.parametrize(
    "grow_fn",
    [
        lambda m: G.add_heads(m, 4, measure=False),
        lambda m: G.insert_zero(m, n_new=1, measure=False),
        lambda m: G.grow_seq(m, 2 * SEQ, "copy", measure=False),
        lambda m: G.grow_seq(m, 2 * SEQ, "tile", measure=False),  # tiled positions are alternatives
    ],
    ids=["heads", "insert_zero", "seq_copy", "seq_tile"],
)
def test_operators_without_scaling_need_no_multipliers(grow_fn):
    small = tiny(**LN_TIED)
    result = grow_fn(small)
    assert lr_multipliers(result) == {}
    state = {n: {"exp_avg": p.detach() + 1, "exp_avg_sq": p.detach() ** 2, "step": torch.tensor(3.0)}
             for n, p in small.named_parameters()}
    function = grow_optimizer_state(state, result.param_map)
    dynamics = grow_optimizer_state(state, result.param_map, "dynamics", model=result.model)
    for name in function:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(function[name][key], dynamics[name][key]), (name, key)


def test_bad_preserve_is_one_clear_config_error():
    model = tiny(**LN_TIED)
    with pytest.raises(ConfigError, match="preserve='both'.*'function', 'dynamics'"):
        G.grow(model, model.config.replace(d_model=32, n_head=4), preserve="both", measure=False)
    result = G.clone(model, 2, measure=False)
    with pytest.raises(ConfigError, match="needs model="):
        grow_optimizer_state({"x": {}}, result.param_map, "dynamics")


def test_grow_records_preserve_for_the_handoff():
    model = tiny(**LN_TIED)
    target = model.config.replace(d_model=32, n_head=4)
    result = G.grow(model, target, preserve="dynamics", measure=False)
    assert result.report.options["preserve"] == "dynamics"
    assert any("preserve='dynamics'" in note for note in result.report.notes)
    opt = adamw(model)
    train_step(model, opt, 0)
    carried = handoff(result, optimizer_state_by_name(model, opt))
    assert carried.preserve == "dynamics" and carried.lr_multipliers == lr_multipliers(result)
    plain = handoff(G.grow(model, target, measure=False), optimizer_state_by_name(model, opt))
    assert plain.preserve == "function" and plain.lr_multipliers == {}


# ------------------------------------------------------------------------------- the LR mechanism
def reference_adamw(p, grad, m, v, step, lr, wd, betas, eps, multiplier):
    """Loshchilov & Hutter 2019, Algorithm 2, with the direction scaled by ``multiplier``."""
    m = betas[0] * m + (1 - betas[0]) * grad
    v = betas[1] * v + (1 - betas[1]) * grad**2
    u = (m / (1 - betas[0] ** step)) / ((v / (1 - betas[1] ** step)).sqrt() + eps)
    return p * (1 - lr * wd) - lr * multiplier * u


@pytest.mark.parametrize("strength_step", [0, 2])  # window:4 -> the step uses m (t=1) or 1 + (m-1)/2
def test_multiplied_step_matches_a_hand_written_adamw(strength_step):
    g = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(6, 5, generator=g, dtype=torch.float64))
    vector = torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))
    model = torch.nn.ParameterDict({"w": weight, "b": vector})
    lr, wd, betas, eps = 0.05, 0.1, (0.9, 0.95), 1e-8
    opt = torch.optim.AdamW([{"params": [weight], "weight_decay": wd}, {"params": [vector], "weight_decay": 0.0}],
                            lr=lr, betas=betas, eps=eps, fused=True)
    rows = torch.tensor([[0.5], [1.0], [0.25], [1.0], [2.0], [1.0]], dtype=torch.float64)  # per element
    multipliers = LRMultipliers({"w": rows, "b": torch.tensor(0.375)}, relax="window:4", steps_taken=strength_step)
    t = 1.0 - strength_step / 4
    expected = []
    for p, mult, decay in ((weight, rows, wd), (vector, torch.tensor(0.375, dtype=torch.float64), 0.0)):
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
        zeros = torch.zeros_like(p)
        expected.append(reference_adamw(p.detach(), p.grad, zeros, zeros, 1, lr, decay, betas, eps, 1 + t * (mult - 1)))
    multipliers.step(opt, model)
    torch.testing.assert_close(weight.detach(), expected[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(vector.detach(), expected[1], rtol=1e-12, atol=1e-14)
    assert multipliers.steps_taken == strength_step + 1


def test_relaxation_schedule_values():
    assert [Relax.parse("window:4").strength(j) for j in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert Relax.parse("never").strength(10**6) == 1.0 and Relax.parse("immediate").strength(0) == 0.0
    assert str(Relax.parse("window:7")) == "window:7"
    done = LRMultipliers({"w": torch.tensor(0.5)}, "window:2", steps_taken=2)
    assert done.done and not LRMultipliers({"w": torch.tensor(0.5)}, "never", steps_taken=99).done
    for bad in ("window:0", "window", "linear:3", "window:-2", "sometimes"):
        with pytest.raises(ConfigError, match=f"dynamics_relax={bad!r}.*'never', 'immediate', 'window:N'"):
            Relax.parse(bad)


def test_immediate_relaxation_is_a_plain_adamw_step():
    model = torch.nn.ParameterDict({"w": torch.nn.Parameter(torch.ones(3, 2))})
    copy = torch.nn.ParameterDict({"w": torch.nn.Parameter(torch.ones(3, 2))})
    for m, multipliers in ((model, LRMultipliers({"w": torch.tensor(0.5)}, "immediate")), (copy, None)):
        opt = torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.1)
        m["w"].grad = torch.arange(6.0).view(3, 2)
        adamw_step(opt, m, multipliers)
    assert torch.equal(model["w"], copy["w"])


def test_checkpoint_round_trip_of_multipliers(tmp_path):
    result = G.grow_ffn(tiny(**LN_TIED), 48, "split", measure=False)  # non-uniform multipliers
    multipliers = LRMultipliers(lr_multipliers(result), "window:50", steps_taken=7)
    assert any(m.dim() > 0 for m in multipliers.multipliers.values())
    model = result.model
    ckpt = Checkpoint(model.config, model.block_keys, model.state_dict(), None, {}, lr_multipliers=multipliers)
    save_checkpoint(tmp_path / "ckpt", ckpt)
    back = load_checkpoint(tmp_path / "ckpt").lr_multipliers
    assert str(back.relax) == "window:50" and back.steps_taken == 7
    assert set(back.multipliers) == set(multipliers.multipliers)
    for name, m in multipliers.multipliers.items():
        assert torch.equal(back.multipliers[name], m), name
    save_checkpoint(tmp_path / "plain", Checkpoint(model.config, model.block_keys, model.state_dict(), None, {}))
    assert load_checkpoint(tmp_path / "plain").lr_multipliers is None


def test_trainer_carries_multipliers_through_an_exact_resume(tmp_path):
    from test_train_helpers import fast_train_config, micro_model, prepare_bytes_data

    from transformer_grow.train import Trainer

    data, data_config = prepare_bytes_data(tmp_path / "data")
    trainer = Trainer(micro_model(n_layer=1, d_model=32), fast_train_config(max_steps=12), data,
                      out_dir=tmp_path / "run", data_config=data_config)
    trainer.train_steps(3)
    model, state = trainer.unwrap()
    result = G.grow_ffn(model, model.config.d_ff + 32, "split", measure=False)  # non-uniform multipliers
    carried = handoff(result, state, "dynamics")
    trainer.replace_model(result.model, carried.optimizer_state, lr_multipliers=carried.lr_multipliers,
                          relax="window:4")
    trainer.train_steps(2)
    trainer.save()
    trainer.train_steps(3)

    resumed = Trainer.resume(tmp_path / "run", data)
    assert resumed.lr_multipliers is not None and resumed.lr_multipliers.steps_taken == 2
    assert str(resumed.lr_multipliers.relax) == "window:4"
    without = Trainer.resume(tmp_path / "run", data)
    without.lr_multipliers = None  # what a checkpoint that dropped them would resume into
    resumed.train_steps(3)
    without.train_steps(3)
    final = dict(trainer.model.named_parameters())
    for name, p in resumed.model.named_parameters():
        assert torch.equal(p, final[name]), name
    assert any(not torch.equal(p, final[n]) for n, p in without.model.named_parameters())

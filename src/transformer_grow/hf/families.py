"""Hugging Face model families as data: a parameter key map and a config mapping per family.

A family is a :class:`Family` (:mod:`transformer_grow.hf.keymap`): the ``transformers`` class, a
declarative key map from our parameter names (``blocks.{b}.attn.q_proj.weight``) to theirs
(``model.layers.{i}.self_attn.q_proj.weight``), and two functions between their config and our
:class:`ModelConfig`. Conversion is *native*: the HF model becomes our
:class:`~transformer_grow.model.GPT`, so every growth operator works unchanged, and a grown GPT goes
back through the same table. Adding a family is one more table here, registered in :data:`FAMILIES`
(BERT's is in :mod:`transformer_grow.hf.bert`).

The math of each family against ours (checked in ``transformers`` 5.x modeling code; tests measure it):

- GPT-2: pre-LN, LayerNorm with bias, learned positions, ``gelu_new`` = our GELU, both the tanh
  approximation given by Hendrycks & Gimpel 2016, attention scaled by ``1/sqrt(head_dim)``, tied
  head. ``Conv1D`` stores weights ``[in, out]``: transposed here; ``c_attn`` is q, k, v fused along the
  output: split in three. The attention width is ``n_embd``: heads growth (``n_head * head_dim !=
  d_model``) cannot be exported to GPT-2.
- Llama / Mistral / Qwen2: pre-RMSNorm (``x * rsqrt(mean(x^2) + eps) * w``, our ``nn.RMSNorm``),
  SwiGLU ``down(silu(gate(x)) * up(x))``, GQA, RoPE with rotate-half over split halves (Su et al. 2021;
  the GPT-NeoX layout) with ``inv_freq = base^(-2j/d)``: the same layout as our
  :class:`~transformer_grow.model.layers.RotaryEmbedding`, so q/k weights need no permutation. RoPE
  ``linear`` scaling divides positions by ``factor``: our ``rope_scale``. Qwen2 has q/k/v biases and
  no o bias (our ``qkv_bias``). Mistral's sliding window equals full causal attention when the window
  is at least the sequence length; a shorter window is refused.
- Mixtral / Qwen2-MoE (the MoE counterparts of Llama/Mistral and Qwen2): softmax over all experts,
  top-k, chosen probabilities renormalised: our router's forward (Qwen2-MoE with ``norm_topk_prob``
  and an empty shared expert). Experts are stored as ``[E, 2*d_ff, d]`` (gate then up) and
  ``[E, d, d_ff]`` tensors. Our router's backward differs (a stop-gradient on the renormaliser,
  :mod:`transformer_grow.model.moe`): the function is the same, the router's training signal is not.
- Dropout (training only; every certificate is measured in eval mode): ours drops embeddings, residual
  updates and attention weights with one rate; GPT-2 has the three rates (``resid_pdrop`` is read), the
  Llama family attention dropout only.
- BERT (``BertForMaskedLM``, bidirectional, post-LN, MLM head): :mod:`transformer_grow.hf.bert`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformer_grow.errors import ConfigError, choice, require
from transformer_grow.hf.bert import BERT, BERT_REFUSED
from transformer_grow.hf.bert import BERT_ACTIVATIONS as BERT_ACTIVATIONS
from transformer_grow.hf.bert import BERT_UNTIED_KEYS as BERT_UNTIED_KEYS
from transformer_grow.hf.keymap import Family, Piece
from transformer_grow.model import ModelConfig

# Context (our seq_len) given to a RoPE model when the caller names none: RoPE has no position table,
# so seq_len is only the length we train and certify at; max_position_embeddings is often 32k-128k.
DEFAULT_ROPE_SEQ_LEN = 2048


# ----------------------------------------------------------------------------------- key maps
def _llama_keys(bias: str = "") -> dict[str, Piece]:
    """Llama-style names; ``bias`` lists which projections may carry biases (present only if ours do)."""
    layer = "model.layers.{i}."
    keys = {
        "tok_emb.weight": Piece("model.embed_tokens.weight"),
        "norm_f.weight": Piece("model.norm.weight"),
        "lm_head.weight": Piece("lm_head.weight"),
        "blocks.{b}.attn_norm.weight": Piece(layer + "input_layernorm.weight"),
        "blocks.{b}.mlp_norm.weight": Piece(layer + "post_attention_layernorm.weight"),
    }
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        for kind in ("weight", "bias"):
            keys[f"blocks.{{b}}.attn.{proj}.{kind}"] = Piece(f"{layer}self_attn.{proj}.{kind}")
    for proj in ("gate_proj", "up_proj", "down_proj"):
        for kind in ("weight", "bias"):
            keys[f"blocks.{{b}}.mlp.{proj}.{kind}"] = Piece(f"{layer}mlp.{proj}.{kind}")
    return keys


def _moe_keys() -> dict[str, Piece]:
    """Llama-style attention plus stacked experts (Mixtral, Qwen2-MoE in transformers 5)."""
    keys = {k: v for k, v in _llama_keys().items() if ".mlp." not in k}
    layer = "model.layers.{i}.mlp."
    keys["blocks.{b}.mlp.router.weight"] = Piece(layer + "gate.weight")
    gate_up = layer + "experts.gate_up_proj"  # gate rows, then up rows
    keys["blocks.{b}.mlp.experts.{e}.gate_proj.weight"] = Piece(gate_up, expert=True, part=(0, 2))
    keys["blocks.{b}.mlp.experts.{e}.up_proj.weight"] = Piece(gate_up, expert=True, part=(1, 2))
    keys["blocks.{b}.mlp.experts.{e}.down_proj.weight"] = Piece(layer + "experts.down_proj", expert=True)
    return keys


def _gpt2_keys() -> dict[str, Piece]:
    layer = "transformer.h.{i}."
    keys = {
        "tok_emb.weight": Piece("transformer.wte.weight"),
        "pos_emb.weight": Piece("transformer.wpe.weight"),
        "norm_f.weight": Piece("transformer.ln_f.weight"),
        "norm_f.bias": Piece("transformer.ln_f.bias"),
        "lm_head.weight": Piece("lm_head.weight"),
    }
    for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
        for kind in ("weight", "bias"):
            keys[f"blocks.{{b}}.{ours}.{kind}"] = Piece(f"{layer}{theirs}.{kind}")
    for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):  # c_attn: q, k, v along the output
        keys[f"blocks.{{b}}.attn.{proj}.weight"] = Piece(layer + "attn.c_attn.weight", transpose=True, part=(j, 3))
        keys[f"blocks.{{b}}.attn.{proj}.bias"] = Piece(layer + "attn.c_attn.bias", part=(j, 3))
    for ours, theirs in (("attn.o_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"), ("mlp.down_proj", "mlp.c_proj")):
        keys[f"blocks.{{b}}.{ours}.weight"] = Piece(f"{layer}{theirs}.weight", transpose=True)
        keys[f"blocks.{{b}}.{ours}.bias"] = Piece(f"{layer}{theirs}.bias")
    return keys


# ------------------------------------------------------------------------------ config maps
def _rope_fields(hf) -> dict[str, Any]:
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    kind = rope.get("rope_type", "default")
    choice(f"{type(hf).__name__} rope_type", kind, ("default", "linear"))
    return {"rope_base": float(rope["rope_theta"]), "rope_scale": float(rope.get("factor", 1.0)) if kind == "linear"
            else 1.0}


def _rope_parameters(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.rope_scale == 1.0:
        return {"rope_type": "default", "rope_theta": cfg.rope_base}
    return {"rope_type": "linear", "rope_theta": cfg.rope_base, "factor": cfg.rope_scale}


def _rope_seq_len(hf, seq_len: int | None) -> int:
    """Our seq_len for a RoPE model: the caller's, else max_position_embeddings capped (see above); a
    sliding window shorter than it is refused (full causal attention is what our model computes)."""
    seq = seq_len or min(hf.max_position_embeddings, DEFAULT_ROPE_SEQ_LEN)
    window = _sliding_window(hf)
    if window is not None and seq_len is None:
        seq = min(seq, window)
    require(window is None or window >= seq,
            f"{type(hf).__name__}: sliding_window={window} is shorter than seq_len={seq}; our model computes "
            f"full causal attention, equal to the window only up to its length: pass seq_len <= {window}")
    return seq


def _sliding_window(hf) -> int | None:
    window = getattr(hf, "sliding_window", None)
    types = getattr(hf, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None  # Qwen2 without use_sliding_window: every layer attends fully
    return window


def _read_llama_like(hf, seq_len: int | None, *, qkv_bias: bool = False) -> dict[str, Any]:
    act = getattr(hf, "hidden_act", "silu")
    require(act == "silu", f"{type(hf).__name__} hidden_act={act!r} is not supported; allowed: 'silu' (SwiGLU)")
    attention_bias, mlp_bias = getattr(hf, "attention_bias", False), getattr(hf, "mlp_bias", False)
    require(attention_bias == mlp_bias,
            f"attention_bias={attention_bias} with mlp_bias={mlp_bias} is not supported; our bias covers both "
            "(allowed: both true or both false)")
    return dict(
        n_layer=hf.num_hidden_layers, d_model=hf.hidden_size, n_head=hf.num_attention_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        n_kv_head=hf.num_key_value_heads or hf.num_attention_heads, d_ff=hf.intermediate_size,
        vocab_size=hf.vocab_size, seq_len=_rope_seq_len(hf, seq_len), norm="rmsnorm", norm_eps=hf.rms_norm_eps,
        pos="rope", **_rope_fields(hf), mlp="swiglu", tie_embeddings=bool(hf.tie_word_embeddings),
        bias=bool(attention_bias), qkv_bias=qkv_bias, dropout=float(hf.attention_dropout or 0.0),
        init_std=hf.initializer_range, scale_residual_init=False,  # HF inits every linear with one std
    )


def _write_llama_like(cfg: ModelConfig, extra: dict[str, Any]) -> dict[str, Any]:
    fields = dict(
        num_hidden_layers=cfg.n_layer, hidden_size=cfg.d_model, num_attention_heads=cfg.n_head,
        head_dim=cfg.head_dim, num_key_value_heads=cfg.n_kv_head, intermediate_size=cfg.d_ff,
        vocab_size=cfg.vocab_size, rms_norm_eps=cfg.norm_eps, rope_parameters=_rope_parameters(cfg),
        tie_word_embeddings=cfg.tie_embeddings, attention_dropout=cfg.dropout, initializer_range=cfg.init_std,
        hidden_act="silu", max_position_embeddings=max(cfg.seq_len, extra.get("max_position_embeddings") or 0),
    )
    window = extra.get("sliding_window")
    if window is not None:  # keep full attention over the context our model was certified at
        fields["sliding_window"] = max(window, cfg.seq_len)
    return fields


def _read_llama(hf, seq_len):
    require(getattr(hf, "pretraining_tp", 1) in (1, None), "LlamaConfig pretraining_tp must be 1")
    return _read_llama_like(hf, seq_len)


def _write_llama(cfg, extra):
    require(not cfg.qkv_bias or cfg.bias, "qkv_bias without bias cannot be exported to Llama (use Qwen2)")
    return {**_write_llama_like(cfg, extra), "attention_bias": cfg.bias, "mlp_bias": cfg.bias}


def _read_qwen2(hf, seq_len):
    return _read_llama_like(hf, seq_len, qkv_bias=True)


def _write_no_bias(name: str, qkv: bool) -> Callable[[ModelConfig, dict], dict]:
    def write(cfg: ModelConfig, extra: dict[str, Any]) -> dict[str, Any]:
        require(not cfg.bias and cfg.qkv_bias == qkv,
                f"{name} has {'q/k/v biases only' if qkv else 'no biases'}; this model has bias={cfg.bias}, "
                f"qkv_bias={cfg.qkv_bias}")
        return _write_llama_like(cfg, extra)
    return write


def _read_moe(hf, seq_len, *, qkv_bias: bool = False) -> dict[str, Any]:
    n_expert = getattr(hf, "num_local_experts", None) or hf.num_experts
    fields = _read_llama_like(hf, seq_len, qkv_bias=qkv_bias)
    fields.update(n_expert=n_expert, moe_top_k=hf.num_experts_per_tok,
                  moe_aux_loss_coef=float(hf.router_aux_loss_coef))
    return fields


def _read_mixtral(hf, seq_len):
    return _read_moe(hf, seq_len)


def _write_mixtral(cfg, extra):
    require(cfg.n_expert > 0, "a dense model is exported to Llama/Mistral, not Mixtral")
    return {**_write_no_bias("Mixtral", False)(cfg, extra), "num_local_experts": cfg.n_expert,
            "num_experts_per_tok": cfg.moe_top_k, "router_aux_loss_coef": cfg.moe_aux_loss_coef,
            "router_jitter_noise": 0.0}


def _read_qwen2_moe(hf, seq_len):
    require(getattr(hf, "norm_topk_prob", False),
            "Qwen2MoeConfig norm_topk_prob=False is not supported; our router renormalises the top-k probabilities")
    require(not hf.shared_expert_intermediate_size,
            f"Qwen2MoeConfig shared_expert_intermediate_size={hf.shared_expert_intermediate_size} is not supported; "
            "our MoE has no shared expert (allowed: 0)")
    require(hf.decoder_sparse_step == 1 and not hf.mlp_only_layers,
            "Qwen2-MoE with dense layers (decoder_sparse_step > 1 or mlp_only_layers) is not supported")
    fields = _read_moe(hf, seq_len, qkv_bias=True)
    fields["d_ff"] = hf.moe_intermediate_size
    return fields


def _write_qwen2_moe(cfg, extra):
    require(cfg.n_expert > 0, "a dense model is exported to Qwen2, not Qwen2-MoE")
    fields = _write_no_bias("Qwen2-MoE", True)(cfg, extra)
    return {**fields, "num_experts": cfg.n_expert, "num_experts_per_tok": cfg.moe_top_k,
            "moe_intermediate_size": cfg.d_ff, "shared_expert_intermediate_size": 0, "norm_topk_prob": True,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "router_aux_loss_coef": cfg.moe_aux_loss_coef}


GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # the tanh approximation: ours


def _read_gpt2(hf, seq_len):
    act = hf.activation_function
    require(act in GPT2_ACTIVATIONS,
            f"GPT2Config activation_function={act!r} is not supported; allowed: {', '.join(GPT2_ACTIVATIONS)}")
    require(hf.scale_attn_weights and not hf.scale_attn_by_inverse_layer_idx and not hf.add_cross_attention,
            "GPT2Config must have scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False and no "
            "cross-attention")
    require(seq_len in (None, hf.n_positions),
            f"seq_len={seq_len} is not allowed for GPT-2: learned positions fix it to n_positions={hf.n_positions}")
    return dict(
        n_layer=hf.n_layer, d_model=hf.n_embd, n_head=hf.n_head, d_ff=hf.n_inner or 4 * hf.n_embd,
        vocab_size=hf.vocab_size, seq_len=hf.n_positions, norm="layernorm", norm_eps=hf.layer_norm_epsilon,
        pos="learned", mlp="gelu", tie_embeddings=bool(hf.tie_word_embeddings), bias=True,
        dropout=float(hf.resid_pdrop), init_std=hf.initializer_range, scale_residual_init=True,
    )


def _write_gpt2(cfg: ModelConfig, extra: dict[str, Any]) -> dict[str, Any]:
    require(cfg.d_attn == cfg.d_model and cfg.n_kv_head == cfg.n_head,
            f"GPT-2 attention is n_embd wide with one kv head per head; this model has n_head*head_dim="
            f"{cfg.d_attn}, d_model={cfg.d_model}, n_kv_head={cfg.n_kv_head} (grow heads by width=clone instead)")
    return dict(n_layer=cfg.n_layer, n_embd=cfg.d_model, n_head=cfg.n_head, n_inner=cfg.d_ff,
                vocab_size=cfg.vocab_size, n_positions=cfg.seq_len, layer_norm_epsilon=cfg.norm_eps,
                tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std,
                resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout)


FAMILIES: dict[str, Family] = {
    "gpt2": Family("gpt2", "GPT2LMHeadModel", "GPT2Config", _gpt2_keys(), _read_gpt2, _write_gpt2,
                   architecture=(("norm", "layernorm"), ("pos", "learned"), ("mlp", "gelu"), ("bias", True))),
    "llama": Family("llama", "LlamaForCausalLM", "LlamaConfig", _llama_keys(), _read_llama, _write_llama,
                    moe_family="mixtral"),
    "mistral": Family("mistral", "MistralForCausalLM", "MistralConfig", _llama_keys(), _read_llama_like,
                      _write_no_bias("Mistral", False), moe_family="mixtral"),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", "Qwen2Config", _llama_keys(), _read_qwen2,
                    _write_no_bias("Qwen2", True), moe_family="qwen2_moe"),
    "mixtral": Family("mixtral", "MixtralForCausalLM", "MixtralConfig", _moe_keys(), _read_mixtral, _write_mixtral,
                      moe_family="mixtral"),
    "qwen2_moe": Family("qwen2_moe", "Qwen2MoeForCausalLM", "Qwen2MoeConfig", _moe_keys(), _read_qwen2_moe,
                        _write_qwen2_moe, moe_family="qwen2_moe",
                        zero_params=("shared_expert_gate.weight",)),
    "bert": BERT,
}
SUPPORTED_CLASSES = tuple(f.hf_class for f in FAMILIES.values())
# Source config fields a family's write_config reads (it sets them no lower than before).
EXTRA_FIELDS = ("max_position_embeddings", "sliding_window")
# Fields carried when exporting to another family (dense Llama -> Mixtral): the tokenizer's ids.
TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "dtype")
REFUSED = {**BERT_REFUSED}  # classes of a supported family that are not converted, and why


def family_of(model) -> Family:
    """The family of a ``transformers`` model instance; :class:`ConfigError` naming the supported ones."""
    name = type(model).__name__
    for family in FAMILIES.values():
        if family.hf_class == name:
            return family
    why = f" ({REFUSED[name]})" if name in REFUSED else ""
    raise ConfigError(f"{name} is not supported{why}; supported: {', '.join(SUPPORTED_CLASSES)}")

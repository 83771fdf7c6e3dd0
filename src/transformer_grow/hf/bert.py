"""The BERT family: its key map, config mapping and :class:`~transformer_grow.hf.keymap.Family`
(:data:`BERT`, registered as ``"bert"`` in :data:`~transformer_grow.hf.families.FAMILIES`).

BERT (``BertForMaskedLM``, Devlin et al. 2019): our GPT with ``causal=False`` (bidirectional),
``norm_placement="post"`` (``x = LN(x + f(x))``, no final norm), learned positions, token-type
embeddings, a LayerNorm on the summed embeddings (``emb_norm``) and the MLM head
(``head="mlm"``: dense + GELU + LayerNorm, the tied decoder and its bias). ``hidden_act="gelu"`` is
the exact erf GELU (our ``mlp="gelu_erf"``), ``gelu_new`` the tanh one (ours ``gelu``). HF sums
word + token-type + position embeddings, we word + position + token-type: equal up to fp32 rounding.
Under post-LN a zero-initialised block is ``LN(LN(x))``, not ``x``: depth growth by zero blocks is
not exact (declared ``none``, measured); width cloning is (duplicated features keep LayerNorm's mean
and variance). ``BertModel`` (no LM head) and ``BertLMHeadModel`` (the causal decoder variant) are
refused.
"""

from __future__ import annotations

from typing import Any

from transformer_grow.errors import require
from transformer_grow.hf.keymap import Family, Piece
from transformer_grow.model import ModelConfig


def _bert_keys() -> dict[str, Piece]:
    emb, layer, head = "bert.embeddings.", "bert.encoder.layer.{i}.", "cls.predictions."
    keys = {
        "tok_emb.weight": Piece(emb + "word_embeddings.weight"),
        "pos_emb.weight": Piece(emb + "position_embeddings.weight"),
        "type_emb.weight": Piece(emb + "token_type_embeddings.weight"),
        "mlm_head.bias": Piece(head + "bias"),  # the decoder's bias is this tensor when tied (BERT_UNTIED_KEYS)
        "lm_head.weight": Piece(head + "decoder.weight"),  # untied models only
    }
    modules = {"emb_norm": emb + "LayerNorm", "mlm_head.dense": head + "transform.dense",
               "mlm_head.norm": head + "transform.LayerNorm"}
    blocks = {"attn.q_proj": "attention.self.query", "attn.k_proj": "attention.self.key",
              "attn.v_proj": "attention.self.value", "attn.o_proj": "attention.output.dense",
              "attn_norm": "attention.output.LayerNorm", "mlp.up_proj": "intermediate.dense",
              "mlp.down_proj": "output.dense", "mlp_norm": "output.LayerNorm"}
    modules.update({f"blocks.{{b}}.{ours}": layer + theirs for ours, theirs in blocks.items()})
    for ours, theirs in modules.items():
        for kind in ("weight", "bias"):
            keys[f"{ours}.{kind}"] = Piece(f"{theirs}.{kind}")
    return keys


# Untied BertForMaskedLM (transformers 5): the decoder's own bias is used; cls.predictions.bias is not
# (exported as zero, see zero_params).
BERT_UNTIED_KEYS = (("mlm_head.bias", Piece("cls.predictions.decoder.bias")),)

# BertConfig hidden_act -> our mlp: transformers' "gelu" is the exact erf GELU, "gelu_new" the tanh one.
BERT_ACTIVATIONS = {"gelu": "gelu_erf", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}


def _read_bert(hf, seq_len):
    act = hf.hidden_act
    require(act in BERT_ACTIVATIONS,
            f"BertConfig hidden_act={act!r} is not supported; allowed: {', '.join(BERT_ACTIVATIONS)}")
    position = getattr(hf, "position_embedding_type", "absolute")
    require(position == "absolute", f"BertConfig position_embedding_type={position!r} is not supported; allowed: "
                                    "'absolute' (learned positions)")
    require(not hf.is_decoder and not hf.add_cross_attention,
            "BertConfig is_decoder/add_cross_attention must be false: BertForMaskedLM is a bidirectional encoder")
    require(hf.type_vocab_size >= 1, f"BertConfig type_vocab_size={hf.type_vocab_size} must be >= 1")
    require(seq_len in (None, hf.max_position_embeddings),
            f"seq_len={seq_len} is not allowed for BERT: learned positions fix it to "
            f"max_position_embeddings={hf.max_position_embeddings}")
    return dict(
        n_layer=hf.num_hidden_layers, d_model=hf.hidden_size, n_head=hf.num_attention_heads,
        d_ff=hf.intermediate_size, vocab_size=hf.vocab_size, seq_len=hf.max_position_embeddings,
        norm="layernorm", norm_eps=hf.layer_norm_eps, pos="learned", mlp=BERT_ACTIVATIONS[act],
        tie_embeddings=bool(hf.tie_word_embeddings), bias=True, dropout=float(hf.hidden_dropout_prob),
        init_std=hf.initializer_range, scale_residual_init=False, causal=False, norm_placement="post",
        type_vocab_size=hf.type_vocab_size, emb_norm=True, head="mlm",
    )


def _write_bert(cfg: ModelConfig, extra: dict[str, Any]) -> dict[str, Any]:
    require(cfg.d_attn == cfg.d_model and cfg.n_kv_head == cfg.n_head,
            f"BERT attention is hidden_size wide with one kv head per head; this model has n_head*head_dim="
            f"{cfg.d_attn}, d_model={cfg.d_model}, n_kv_head={cfg.n_kv_head} (grow heads by width=clone instead)")
    require(cfg.mlp in ("gelu", "gelu_erf"), f"BERT needs mlp='gelu_erf' or 'gelu'; this model has mlp={cfg.mlp!r}")
    require(cfg.type_vocab_size >= 1, "BERT needs token-type embeddings (type_vocab_size >= 1)")
    return dict(num_hidden_layers=cfg.n_layer, hidden_size=cfg.d_model, num_attention_heads=cfg.n_head,
                intermediate_size=cfg.d_ff, vocab_size=cfg.vocab_size, max_position_embeddings=cfg.seq_len,
                type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.norm_eps,
                hidden_act="gelu" if cfg.mlp == "gelu_erf" else "gelu_new", tie_word_embeddings=cfg.tie_embeddings,
                initializer_range=cfg.init_std, hidden_dropout_prob=cfg.dropout,
                attention_probs_dropout_prob=cfg.dropout, is_decoder=False)


BERT = Family("bert", "BertForMaskedLM", "BertConfig", _bert_keys(), _read_bert, _write_bert,
              architecture=(("norm", "layernorm"), ("pos", "learned"), ("bias", True), ("causal", False),
                            ("norm_placement", "post"), ("emb_norm", True), ("head", "mlm")),
              auto_class="AutoModelForMaskedLM", untied_keys=BERT_UNTIED_KEYS,
              zero_params=("cls.predictions.bias",))
# BERT classes that are not converted, and why (families.REFUSED).
BERT_REFUSED = {
    "BertModel": "no language-model head: convert BertForMaskedLM",
    "BertLMHeadModel": "the causal decoder variant of BERT; BertForMaskedLM (the bidirectional encoder) is supported",
}

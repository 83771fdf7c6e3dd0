"""The seed API's data conventions (issue 22, items 2 and 8): rows held out for validation are never
trained on; Hugging Face rows (``input_ids`` of ``seq_len`` tokens, ``labels`` with -100, ``attention_mask``
padding) train as HF trains them; a ``TrainConfig`` next to ``budget=`` needs no ``max_steps``; a BERT's
``[MASK]`` id comes from ``tokenizer=`` or its config."""

from __future__ import annotations

import math

import pytest
import torch
from test_seed_api import small_gpt, tiny_llama
from torch.utils.data import DataLoader

from transformer_grow import GrowthManager
from transformer_grow.data.iterable import IterableTokens
from transformer_grow.data.rows import IGNORE
from transformer_grow.errors import ConfigError
from transformer_grow.train.config import TrainConfig

pytestmark = [pytest.mark.filterwarnings("ignore::transformer_grow.plans.timing.GrowthTimingWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

VOCAB, SEQ = 64, 16
TRAIN = TrainConfig(batch_size=8, lr=3e-3, warmup_steps=2, device="cpu")  # no max_steps: budget= is the budget


def random_rows(n: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ item 2: held-out rows
@pytest.mark.parametrize("shuffle", [False, True])
def test_rows_held_out_for_validation_are_never_trained_on(shuffle):
    rows = random_rows(12, SEQ + 1)
    loader = DataLoader(rows, batch_size=4, shuffle=shuffle, generator=torch.Generator().manual_seed(0))
    data = IterableTokens(loader, VOCAB)
    held = {tuple(w.tolist()) for w in data.val_windows(SEQ, 4)}
    assert len(held) == 4
    for step in range(12):  # six passes over the loader: its rows come again, the held-out ones never
        x, y = data.batch(step, 4, SEQ)
        trained = {tuple(torch.cat([xi, yi[-1:]]).tolist()) for xi, yi in zip(x, y)}
        assert not trained & held


def test_a_loader_too_small_to_hold_rows_out_is_refused_in_one_line():
    rows = random_rows(3, 65)  # the audit's loader: 3 rows of uniform random ids
    manager = GrowthManager(model=small_gpt(64), strategy="g_stack", target_size="110K", budget="60K tokens",
                            log=None, train_config=TRAIN, n_evals=2)  # eval_windows: 32
    with pytest.raises(ConfigError, match="train_data holds 3 rows in one pass: holding out 32 validation windows "
                                          r".*pass eval_data, or ask for at most 2 validation windows") as e:
        manager.grow_and_train(train_data=DataLoader(rows, batch_size=3))
    assert "\n" not in str(e.value)


def test_validation_on_held_out_rows_is_not_below_the_entropy_of_random_data():
    rows = random_rows(3, 65)  # 2 rows held out, 1 trained on (and memorised) for many passes
    manager = GrowthManager(model=small_gpt(64), strategy="g_stack", target_size="110K", budget="30K tokens",
                            log=None, train_config=TRAIN, n_evals=2, eval_windows=2)
    manager.grow_and_train(train_data=DataLoader(rows, batch_size=3))
    assert manager.result.final_val_loss > math.log(VOCAB)  # uniform ids: nothing below ln(64) without a leak


# --------------------------------------------------------- item 8: Hugging Face rows
def test_rows_of_the_models_length_give_seq_len_inputs_and_seq_len_minus_one_targets():
    rows = random_rows(8, SEQ)
    data = IterableTokens([{"input_ids": rows}], VOCAB)
    x, y = data.batch(0, 8, SEQ)
    assert torch.equal(x, rows) and torch.equal(y[:, :-1], rows[:, 1:]) and bool((y[:, -1] == -1).all())
    x, y = IterableTokens([{"input_ids": rows}], VOCAB).batch(0, 16, SEQ // 2)  # half the context: same rows
    assert torch.equal(x[:2].reshape(-1), rows[0]) and int((y == -1).sum()) == 8
    assert IterableTokens([{"input_ids": rows}], VOCAB).val_windows(SEQ, 2, labelled=True)[:, -1].tolist() == [-1, -1]
    with pytest.raises(ConfigError, match="targets that are not counted"):
        IterableTokens([{"input_ids": rows}], VOCAB).val_windows(SEQ, 2)  # a caller that would misread them


def test_the_seed_api_trains_an_hf_llama_on_rows_of_its_own_length():
    rows = torch.stack([(torch.arange(SEQ) * (i % 7 + 1) + i) % VOCAB for i in range(160)])
    batches = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in rows.split(8)]
    manager = GrowthManager(model=tiny_llama(), strategy="g_stack", target_size="80K", budget="20K tokens",
                            log=None, train_config=TRAIN, n_evals=2, eval_windows=8)
    large = manager.grow_and_train(batches)
    assert type(large).__name__ == "LlamaForCausalLM"
    curve = manager.result.record.curve
    assert curve[-1].val_loss < curve[0].val_loss - 0.5  # it learned
    assert manager.result.record.total_tokens % SEQ == 0  # tokens count the inputs: SEQ per window


def test_labels_and_padding_count_only_real_targets():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 11, 12, 13, 14], [15, 16, 17, 18, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = ids.masked_fill(mask == 0, IGNORE)
    labels[0, :3] = IGNORE  # a prompt: its tokens are inputs, not targets
    x, y = IterableTokens([{"input_ids": ids, "attention_mask": mask, "labels": labels}], VOCAB).batch(0, 3, 6)
    assert x[0].tolist() == [5, 6, 7, 8, 9, 10] and y[0].tolist() == [-1, -1, 8, 9, 10, -1]
    assert x[1].tolist() == [11, 12, 13, 14, 0, 0] and y[1].tolist() == [12, 13, 14, -1, -1, -1]  # left: rotated
    assert x[2].tolist() == [15, 16, 17, 18, 0, 0] and y[2].tolist() == [16, 17, 18, -1, -1, -1]
    # what the padding holds never matters: other pad ids give the same batch
    other = {"input_ids": ids.masked_fill(mask == 0, 63), "attention_mask": mask, "labels": labels}
    assert all(torch.equal(a, b) for a, b in zip(IterableTokens([other], VOCAB).batch(0, 3, 6), (x, y)))
    # the loss is HF's: mean cross-entropy over the counted targets only
    model = small_gpt(6).eval()
    with torch.no_grad():
        logits = model(x).logits
        counted = y != -1
        expected = torch.nn.functional.cross_entropy(logits[counted], y[counted])
        assert float(model(x, y).loss) == pytest.approx(float(expected), abs=1e-5)


def test_dynamically_padded_batches_of_other_lengths_train_and_validate():
    gen = torch.Generator().manual_seed(2)
    batches = []
    for i in range(20):  # HF's DataCollatorWithPadding: each batch padded to its longest row
        length = 8 + i % 3 * 5
        ids = torch.randint(0, VOCAB, (4, length), generator=gen)
        real = torch.randint(3, length + 1, (4, 1), generator=gen)
        mask = (torch.arange(length)[None] < real).long()
        batches.append({"input_ids": ids * mask, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE)})
    manager = GrowthManager(model=small_gpt(), strategy="g_stack", target_size="110K", budget="6K tokens", log=None,
                            train_config=TRAIN, n_evals=2, eval_windows=4)
    manager.grow_and_train(batches)
    assert all(math.isfinite(p.val_loss) for p in manager.result.record.curve)
    assert bool((manager._windows < 0).any())  # validated on the counted targets only (run/windows.py)


@pytest.mark.parametrize("item, message", [
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "labels": torch.zeros(2, 4, dtype=torch.long)},
     "labels must equal input_ids"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.tensor([[1, 0, 1, 1]] * 2)},
     "one run of tokens per row"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.full((2, 4), 2)}, "0 \\(padding\\)"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "position_ids": torch.zeros(2, 4, dtype=torch.long)},
     "'position_ids' is not read"),
    ({"input_ids": torch.full((2, 4), -3)}, "token id -3, outside the model's vocabulary"),
])
def test_bad_hf_rows_are_refused_in_one_line(item, message):
    with pytest.raises(ConfigError, match=message) as e:
        IterableTokens([item], VOCAB)
    assert "\n" not in str(e.value)


def test_a_bidirectional_model_refuses_padding_and_labels():
    ids, mask = torch.ones(2, 4, dtype=torch.long), torch.tensor([[1, 1, 1, 0]] * 2)
    with pytest.raises(ConfigError, match="a bidirectional model \\(BERT\\) has no attention mask here"):
        IterableTokens([{"input_ids": ids, "attention_mask": mask}], VOCAB, causal=False)
    with pytest.raises(ConfigError, match="draws its own masks: pass input_ids without labels"):
        IterableTokens([{"input_ids": ids, "labels": ids}], VOCAB, causal=False)


# ------------------------------------------------- item 8: TrainConfig and a BERT's [MASK]
def test_a_train_config_next_to_budget_needs_no_max_steps():
    manager = GrowthManager(model=small_gpt(), strategy="g_stack", target_size="110K", budget="20K tokens",
                            train_config=TrainConfig(batch_size=8, device="cpu"), log=None)
    assert manager.train_config.max_steps is None and manager.account.total_steps > 1


class Tokenizer:
    mask_token_id = 3


def tiny_bert(**config):
    import transformers as T

    torch.manual_seed(0)
    return T.BertForMaskedLM(T.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=64, max_position_embeddings=SEQ,
                                          **config)).eval()


def test_a_berts_mask_id_comes_from_the_tokenizer_or_its_config():
    bert = dict(strategy="g_stack", target_size={"n_layer": 4}, budget="12K tokens", log=None)
    manager = GrowthManager(model=tiny_bert(), tokenizer=Tokenizer(), train_config=TRAIN, **bert)
    assert manager.train_config.mask_token_id == 3
    manager = GrowthManager(model=tiny_bert(mask_token_id=4), train_config=TRAIN, **bert)
    assert manager.train_config.mask_token_id == 4
    with pytest.raises(ConfigError, match="BertForMaskedLM is trained by masked LM: give its \\[MASK\\] id"):
        GrowthManager(model=tiny_bert(), train_config=TRAIN, **bert)  # not the last id, a token of BERT's
    with pytest.raises(ConfigError, match="train_config.mask_token_id=5 and tokenizer.mask_token_id=3 disagree"):
        GrowthManager(model=tiny_bert(), tokenizer=Tokenizer(), train_config=TRAIN.replace(mask_token_id=5), **bert)
    rows = torch.stack([(torch.arange(SEQ) * (i % 7 + 1) + i) % VOCAB for i in range(64)])
    manager = GrowthManager(model=tiny_bert(), tokenizer=Tokenizer(), train_config=TRAIN, n_evals=2, eval_windows=8,
                            **bert)
    manager.grow_and_train(DataLoader(rows, batch_size=8))  # rows of SEQ tokens: HF's length
    assert manager.trainer.objective.mask_token_id == 3

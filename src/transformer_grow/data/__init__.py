"""Data pipeline: corpus -> tokenizer -> cached, memory-mapped token arrays -> deterministic batches.

>>> data = prepare_data(DataConfig())            # stdlib corpus, 8192-token BPE, cached
>>> x, y = data.batch(step=0, batch_size=8, seq_len=256, seed=0)
>>> windows = data.val_windows(seq_len=256, n_windows=64)
"""

from transformer_grow.data.config import DataConfig
from transformer_grow.data.prepare import prepare_data
from transformer_grow.data.tokenizer import Tokenizer
from transformer_grow.data.tokens import TokenData

__all__ = ["DataConfig", "TokenData", "Tokenizer", "prepare_data"]

"""transformer-grow: grow Transformer language models during pre-training.

Sub-packages: ``model`` (the GPT model), ``data`` (corpus, tokenizer, batches), ``train`` (trainer,
checkpoints), ``grow`` (growth operators), ``scaling`` (scaling-law lab), ``hf`` (Hugging Face
adapters), ``cli`` (the ``tgrow`` command).
"""

__version__ = "0.1.0"

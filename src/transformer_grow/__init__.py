"""transformer-grow: grow Transformer language models during pre-training.

Sub-packages, in import order (each imports only those before it): ``model`` (the GPT model) and
``data`` (corpus, tokenizer, batches); ``distributed`` (torchrun, DDP/FSDP2); ``grow`` (growth
operators); ``train`` (one model's training); ``growth`` (staged growth training,
:class:`GrowthManager`); ``compare`` (baseline vs plans); ``scaling`` (laws and fits) and ``lab``
(scaling grids); ``cli`` (the ``tgrow`` command). See ARCHITECTURE.md.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that `import transformer_grow.grow` does not load the trainer.
    if name in ("GrowthManager", "GrowthRunResult"):
        from transformer_grow import growth

        return getattr(growth, name)
    raise AttributeError(f"module 'transformer_grow' has no attribute {name!r}")

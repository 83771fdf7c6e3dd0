"""transformer-grow: grow Transformer language models during pre-training.

The front door (:mod:`transformer_grow.run.api`), for our GPT and ``transformers`` models alike:

>>> from transformer_grow import GrowthManager
>>> manager = GrowthManager(model=my_model, strategy="g_stack", target_size="7B", budget="100B tokens")
>>> large = manager.grow_and_train(train_data=train_loader, eval_data=val_loader)

Sub-packages, in import order (each imports only those before it): ``model`` (the GPT model) and
``data`` (corpus, tokenizer, batches); ``distributed`` (torchrun, DDP/FSDP2); ``grow`` (growth
operators); ``hf`` (Hugging Face models in and out); ``train`` (one model's training); ``growth``
(staged growth training, :class:`GrowthManager`); ``compare`` (baseline vs plans); ``scaling`` (laws
and fits) and ``lab`` (scaling grids); ``cli`` (the ``tgrow`` command). See ARCHITECTURE.md.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that `import transformer_grow.operators` does not load the trainer.
    if name in ("GrowthManager", "GrowthRunResult"):
        from transformer_grow import run

        return getattr(run, name)
    if name == "IterableTokens":
        from transformer_grow.data.iterable import IterableTokens

        return IterableTokens
    raise AttributeError(f"module 'transformer_grow' has no attribute {name!r}")

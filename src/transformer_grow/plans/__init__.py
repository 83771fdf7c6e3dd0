"""Growth plans: stages and growth events, the built-in plans and their options, timing rules, the
small-only control and exact FLOP accounting. Nothing here trains (that is :mod:`transformer_grow.run`)."""

"""The scaling lab's runs: grids of model sizes x token budgets trained with our trainer and growth
plans, resumable, and their cost estimates. Fitting the results is :mod:`transformer_grow.scaling`."""

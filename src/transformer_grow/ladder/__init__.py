"""Growth across scale: a ladder of compute budgets, each with a compute-optimal target measured on the
corpus in use, and every plan against scratch and its small-only control at each rung."""

"""``tgrow compare``: a from-scratch baseline against growth plans on one budget, side by side,
with the speedup report and plots."""

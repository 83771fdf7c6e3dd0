"""Scale-out under ``torchrun``: the process-group environment, DDP/FSDP2 wrapping, and the guard
against growing a live wrapper. PyTorch's own wrappers only; no home-made data-parallel layer."""

"""Suite-wide settings: headless plots, no writes outside tmp dirs, deterministic torch."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tokenizer/token caches of tests never land in the user's home directory.
    monkeypatch.setenv("TGROW_CACHE", str(tmp_path_factory.getbasetemp() / "tgrow-cache"))
    torch.manual_seed(0)
    yield

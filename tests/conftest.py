"""Suite-wide settings: headless plots, no writes outside tmp dirs, deterministic torch."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny models and small BLAS calls run many times slower with 2 threads on 2 shared cores; the suite
# instead runs two test processes in parallel (pytest-xdist), one thread each. Subprocesses inherit this.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tokenizer/token caches of tests never land in the user's home directory.
    monkeypatch.setenv("TGROW_CACHE", str(tmp_path_factory.getbasetemp() / "tgrow-cache"))
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def trained_cli_run(tmp_path_factory):
    """A 3-step `tgrow train` run (checkpoint and corpus under the returned root), once per module."""
    from reliability_helpers import train_args

    from transformer_grow.cli.main import main

    root = tmp_path_factory.mktemp("trained")
    assert main([*train_args(root, 3), "--out", str(root / "run")]) == 0
    return root


@pytest.fixture
def cli_run_copy(trained_cli_run, tmp_path):
    """A private copy of :func:`trained_cli_run`'s run directory (and its corpus) to damage."""
    import shutil

    shutil.copytree(trained_cli_run / "run", tmp_path / "run")
    shutil.copytree(trained_cli_run / "corpus", tmp_path / "corpus")
    return tmp_path / "run"


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test (restored after): tiny models gain nothing from threads, and on
    a shared 2-core machine spinning OpenMP threads slow end-to-end runs down by an order of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

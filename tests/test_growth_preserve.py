"""`preserve="dynamics"` through a growth plan: the manager's growth event hands the trainer the LR
multipliers of the width clone, a checkpointed run resumes with them, and bad combinations are refused."""

import numpy as np
import pytest
import torch

from transformer_grow.data import TokenData
from transformer_grow.errors import ConfigError
from transformer_grow.model import preset
from transformer_grow.plans.builders import PlanOptions, build_plan
from transformer_grow.run.manager import GrowthManager
from transformer_grow.train.config import TrainConfig

TARGET = preset("micro", vocab_size=64, n_layer=2, seq_len=16, d_model=32, n_head=2)
TRAIN = TrainConfig(batch_size=4, lr=3e-3, warmup_steps=2, max_steps=1, device="cpu")
BUDGET = 40 * 4 * 16
WIDTH_ONLY = {"compound_stages": [{"width": 2}], "growth_fraction": 0.5}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    tokens = np.cumsum(rng.integers(1, 3, size=12_000)) % 64
    return TokenData(train=tokens[:10_000].astype(np.int64), val=tokens[10_000:].astype(np.int64), vocab_size=64)


def manager(out_dir=None, **options):
    return GrowthManager(TARGET, "compound", budget_tokens=BUDGET, train_config=TRAIN,
                         plan_options=PlanOptions(**WIDTH_ONLY, **options), n_evals=4, eval_windows=4,
                         out_dir=out_dir, log=None)


def test_dynamics_plan_installs_the_clone_multipliers(data):
    m = manager(preserve="dynamics", dynamics_relax="never")
    m.open(data)
    try:
        m.advance(limit_steps=25)  # past the growth at half the budget
        multipliers = m.trainer.lr_multipliers
        assert multipliers is not None, "the growth event did not hand over LR multipliers"
        # width clone x2 stores every block matrix as W/2: its Adam direction is halved
        scales = {name: float(t.max()) for name, t in multipliers.multipliers.items()}
        assert any(abs(v - 0.5) < 1e-6 for v in scales.values()), scales
    finally:
        m.close()


def test_function_plan_has_no_multipliers(data):
    m = manager()
    m.open(data)
    try:
        m.advance(limit_steps=25)
        assert m.trainer.lr_multipliers is None
    finally:
        m.close()


def test_dynamics_plan_resumes_with_its_multipliers(data, tmp_path):
    first = manager(out_dir=tmp_path / "run", preserve="dynamics", dynamics_relax="window:50")
    assert first.run(data, limit_steps=25) is None
    before = {k: v.clone() for k, v in first.trainer.lr_multipliers.multipliers.items()}
    resumed = manager(out_dir=tmp_path / "run", preserve="dynamics", dynamics_relax="window:50")
    resumed.open(data)
    try:
        after = resumed.trainer.lr_multipliers
        assert after is not None and set(after.multipliers) == set(before)
        for name, tensor in before.items():
            torch.testing.assert_close(after.multipliers[name], tensor)
    finally:
        resumed.close()


@pytest.mark.parametrize("options, message", [
    ({"preserve": "dynamics", "optimizer": "fresh"}, "needs optimizer='carry'"),
    ({"preserve": "weights"}, "preserve"),
    ({"dynamics_relax": "window:5"}, "only with preserve='dynamics'"),
    ({"preserve": "dynamics", "dynamics_relax": "soon"}, "dynamics_relax"),
])
def test_bad_preserve_options_are_refused_before_training(options, message):
    with pytest.raises(ConfigError, match=message):
        build_plan("compound", TARGET, BUDGET, PlanOptions(**WIDTH_ONLY, **options)).validate()
        PlanOptions(**WIDTH_ONLY, **options).validate()

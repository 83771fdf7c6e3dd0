"""The pooled annealing prior (scaling/anneal_prior.py) and the learning-curve fit that uses it.

Curves are generated from the multi-power law itself (Luo et al. 2025) on a warmup-stable-decay schedule,
``L = E + A z^-alpha + B w``, with a known bonus ratio ``r = B / L(T)``, plus noise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from transformer_grow.scaling.anneal_prior import (
    FEW_RUNS_LOG_SD,
    MIN_LOG_SD,
    AnnealPrior,
    fit_anneal_prior,
    has_decay,
    penalty,
)
from transformer_grow.scaling.curve import _effective_noise, fit_learning_curve
from transformer_grow.scaling.schedule_laws import schedule_features

TOTAL = 1000
EVERY = 20


def wsd_lrs(total: int = TOTAL, peak: float = 3e-3, warmup: int = 20, decay_frac: float = 0.2) -> np.ndarray:
    steps = np.arange(total)
    decay_start = int(total * (1 - decay_frac))
    ramp = np.minimum((steps + 1) / warmup, 1.0)
    fall = np.clip((steps - decay_start) / (total - decay_start), 0.0, 1.0)
    return peak * ramp * (1.0 - 0.9 * fall)


def synthetic_curve(ratio: float, rng: np.random.Generator, noise: float = 0.003, lrs=None,
                    e: float = 0.5, a: float = 1.5, alpha: float = 0.3):
    """``(steps, losses, lrs, true_final)``: the law with bonus ratio ``ratio``, log-normal noise ``noise``."""
    lrs = wsd_lrs() if lrs is None else lrs
    steps = np.arange(EVERY, lrs.size + 1, EVERY)
    s1_end = float(np.sum(lrs))
    z, w = schedule_features("multi_power", lrs, steps, s1_end)
    z_end, w_end = schedule_features("multi_power", lrs, np.array([lrs.size]), s1_end)
    base_end = e + a * z_end[0] ** -alpha
    b = ratio * base_end / (1.0 - ratio * w_end[0])  # so that B / L(T) = ratio exactly
    clean = e + a * z ** -alpha + b * w
    return steps.astype(float), clean * np.exp(noise * rng.standard_normal(steps.size)), lrs, float(clean[-1])


def references(ratios, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [synthetic_curve(r, rng)[:3] for r in ratios]


def test_fit_anneal_prior_recovers_the_ratio():
    prior = fit_anneal_prior(references([0.10, 0.12, 0.15, 0.18]))
    assert prior.n_runs == 4 and prior.form == "multi_power"
    assert prior.ratios == pytest.approx([0.10, 0.12, 0.15, 0.18], rel=0.15)
    assert prior.ratio == pytest.approx(np.exp(np.mean(np.log([0.10, 0.12, 0.15, 0.18]))), rel=0.1)
    assert prior.log_sd == pytest.approx(np.std(np.log(prior.ratios), ddof=1), rel=1e-9)


def test_spread_with_few_runs_and_the_floor():
    assert fit_anneal_prior(references([0.15, 0.16])).log_sd == FEW_RUNS_LOG_SD
    assert fit_anneal_prior(references([0.15, 0.15, 0.15], seed=3)).log_sd >= MIN_LOG_SD
    prior = AnnealPrior(0.15, 0.3, 4)
    assert prior.predictive_log_sd == pytest.approx(0.3 * np.sqrt(1.25))
    draws = prior.draw_log_offsets(20_000, np.random.default_rng(0))
    assert np.std(draws) == pytest.approx(prior.predictive_log_sd * np.sqrt(3.0), rel=0.1)  # t with 3 df


def test_references_that_say_nothing_about_annealing_are_refused():
    steps, losses, lrs = references([0.15])[0]
    with pytest.raises(ValueError, match="before the end of its schedule"):
        fit_anneal_prior([(steps[:25], losses[:25], lrs)])
    constant = np.full(TOTAL, 3e-3)
    with pytest.raises(ValueError, match="never lowers the learning rate"):
        fit_anneal_prior([(steps, losses, constant)])
    with pytest.raises(ValueError, match="at least one"):
        fit_anneal_prior([])
    assert has_decay(lrs) and not has_decay(constant) and not has_decay(np.linspace(0, 1, 10))


def test_prior_file_round_trip_and_refusals(tmp_path):
    prior = AnnealPrior(0.15, 0.3, 4, "multi_power", (0.1, 0.15, 0.2, 0.18))
    path = tmp_path / "prior.json"
    path.write_text(json.dumps(prior.to_dict()))
    assert AnnealPrior.load(path) == prior
    for text, message in (("{", "is not JSON"), ("[1]", "JSON object"), ('{"ratio": 0.1}', "missing"),
                          ('{"ratio": -1, "log_sd": 0.3, "n_runs": 2}', "ratio=-1"),
                          ('{"ratio": 0.1, "log_sd": 0.3, "n_runs": 2, "bonus": 1}', "unknown field"),
                          ('{"ratio": "x", "log_sd": 0.3, "n_runs": 2}', "not a number"),
                          ('{"ratio": 0.1, "log_sd": 0.3, "n_runs": 2, "form": "power"}', "form='power'")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            AnnealPrior.load(path)
    with pytest.raises(ValueError, match="does not exist"):
        AnnealPrior.load(tmp_path / "missing.json")


def test_penalty_is_one_gaussian_observation():
    prior = AnnealPrior(0.2, 0.5, 3)
    weight, centre = penalty(prior, final_loss=2.0, noise=0.01)
    assert centre == pytest.approx(0.4)
    # B one predictive sd away from the centre costs exactly one noise unit.
    assert weight * centre * prior.predictive_log_sd == pytest.approx(0.01)


def test_effective_noise_grows_with_autocorrelation():
    rng = np.random.default_rng(0)
    white = rng.standard_normal(400) * 0.01
    ar = np.empty(400)
    ar[0] = white[0]
    for i in range(1, 400):
        ar[i] = 0.8 * ar[i - 1] + white[i] * 0.6
    assert _effective_noise(white) == pytest.approx(0.01, rel=0.2)
    assert _effective_noise(ar) > 2.0 * 1.4826 * np.median(np.abs(ar - np.median(ar)))


def test_prior_predicts_a_wsd_decay_the_curve_has_not_reached():
    rng = np.random.default_rng(7)
    steps, losses, lrs, truth = synthetic_curve(0.15, rng)
    seen = steps <= 0.5 * TOTAL  # the decay starts at 80%
    alone = fit_learning_curve(steps[seen], losses[seen], lrs, n_bootstrap=40)
    prior = fit_anneal_prior(references([0.12, 0.15, 0.18, 0.14], seed=1))
    pooled = fit_learning_curve(steps[seen], losses[seen], lrs, n_bootstrap=40, prior=prior)
    assert alone.prior is None and pooled.prior is prior
    error_alone = abs(alone.predict(TOTAL) / truth - 1)
    error_pooled = abs(pooled.predict(TOTAL) / truth - 1)
    assert error_alone > 0.05  # the curve alone cannot see the bonus of the decay
    assert error_pooled < 0.02 and error_pooled < error_alone / 3
    lo, hi = pooled.predict_interval(TOTAL, 0.9)
    assert lo <= truth <= hi
    assert pooled.as_dict()["anneal_prior"]["ratio"] == prior.ratio
    assert np.all(pooled.predict(np.arange(1, TOTAL + 1)) >= pooled.params["E"])


def test_prior_is_ignored_without_a_decay_and_checked_against_the_form():
    rng = np.random.default_rng(2)
    constant = np.full(TOTAL, 3e-3)
    steps, losses, _, _ = synthetic_curve(0.0, rng, lrs=constant)
    prior = AnnealPrior(0.15, 0.3, 4)
    with_prior = fit_learning_curve(steps[:30], losses[:30], constant, n_bootstrap=2, prior=prior)
    without = fit_learning_curve(steps[:30], losses[:30], constant, n_bootstrap=2)
    assert with_prior.prior is None and with_prior.params == without.params
    steps, losses, lrs, _ = synthetic_curve(0.15, rng)
    with pytest.raises(ValueError, match="lr_area"):
        fit_learning_curve(steps[:30], losses[:30], lrs, n_bootstrap=2, form="lr_area", prior=prior)


def test_prediction_intervals_with_a_prior_cover_new_runs():
    """New runs whose true ratio scatters as the references' did: the 90% interval holds ~90% of them."""
    rng = np.random.default_rng(11)
    log_sd = 0.3
    prior = fit_anneal_prior([synthetic_curve(0.15 * np.exp(log_sd * rng.standard_normal()), rng)[:3]
                              for _ in range(8)])
    held = []
    for _ in range(30):
        steps, losses, lrs, truth = synthetic_curve(0.15 * np.exp(log_sd * rng.standard_normal()), rng)
        seen = steps <= 0.5 * TOTAL
        fit = fit_learning_curve(steps[seen], losses[seen], lrs, n_bootstrap=40, prior=prior,
                                 seed=int(rng.integers(1 << 30)))
        lo, hi = fit.predict_interval(TOTAL, 0.9)
        held.append(lo <= truth <= hi)
    # 30 runs: a nominal 90% gives 27 +- 1.6; a band of the law alone (no prior spread) holds far fewer.
    assert 0.75 <= np.mean(held) <= 1.0

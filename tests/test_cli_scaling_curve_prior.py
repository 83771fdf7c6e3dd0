"""`tgrow scaling curve --reference / --prior / --save-prior`: a pooled prior on the annealing bonus.

The curves are synthetic multi-power-law curves (Luo et al. 2025) of warmup-stable-decay runs: loss =
E + A z^-alpha + B w, ``w`` the annealing still to come (``schedule_features``), B a fixed share of the
loss, with a little multiplicative noise. Before its decay begins a run's own curve cannot show B.
"""

import csv
import json

import numpy as np
import pytest

from transformer_grow.cli.main import main
from transformer_grow.scaling.anneal_prior import AnnealPrior, fit_anneal_prior
from transformer_grow.scaling.curve_data import load_curve
from transformer_grow.scaling.schedule_laws import schedule_features
from transformer_grow.train.schedule import LRSchedule

TOTAL, PEAK, WARMUP, DECAY_FRAC, MIN_RATIO = 1000, 1e-3, 20, 0.2, 0.1
BOOT = ["--bootstrap", "20"]


def wsd_lrs(total=TOTAL, peak=PEAK):
    schedule = LRSchedule("wsd", peak, peak * MIN_RATIO, WARMUP, total, max(1, round(DECAY_FRAC * total)))
    return np.array([schedule(i) for i in range(total)])


def wsd_curve(total=TOTAL, peak=PEAK, e=2.0, a=0.8, alpha=0.4, bonus=0.15, every=20, noise=0.003, seed=0):
    """``(steps, measured loss, lrs, noiseless loss)`` of one synthetic WSD run; B = bonus x (E + A)."""
    lrs = wsd_lrs(total, peak)
    steps = np.arange(every, total + 1, every)
    s1_end = float(np.sum(lrs))
    z, w = schedule_features("multi_power", lrs, steps, s1_end)
    clean = e + a * z ** -alpha + bonus * (e + a) * w
    rng = np.random.default_rng(seed)
    return steps, clean * np.exp(noise * rng.standard_normal(steps.size)), lrs, clean


def write_csv(path, steps, losses, lrs=None):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "val_loss"] + (["lr"] if lrs is not None else []))
        for step, loss in zip(steps, losses):
            writer.writerow([int(step), repr(float(loss))] + ([repr(float(lrs[step - 1]))] if lrs is not None else []))
    return path


def write_jsonl(path, steps, losses, lrs, lr_only_after=None):
    """metrics.jsonl rows; with ``lr_only_after``, steps past it log the lr but no val_loss (a run cut short)."""
    rows = []
    for step, loss in zip(steps, losses):
        row = {"step": int(step), "lr": float(lrs[step - 1])}
        if lr_only_after is None or step <= lr_only_after:
            row["val_loss"] = float(loss)
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def references(tmp_path):
    """Three completed WSD runs of other lengths, peak rates and seeds (two CSV, one metrics.jsonl)."""
    a = wsd_curve(total=800, peak=2e-3, a=0.9, seed=1)
    b = wsd_curve(total=1200, peak=1.5e-3, e=1.9, seed=2)
    c = wsd_curve(total=1000, peak=1e-3, alpha=0.35, seed=3)
    return [str(write_csv(tmp_path / "ref_a.csv", *a[:3])), str(write_csv(tmp_path / "ref_b.csv", *b[:3])),
            str(write_jsonl(tmp_path / "ref_c.jsonl", *c[:3]))]


@pytest.fixture()
def target(tmp_path):
    """A completed WSD run of another size: ``(file, true final loss)``."""
    steps, loss, lrs, clean = wsd_curve(e=2.1, a=0.7, seed=4)
    return str(write_csv(tmp_path / "target.csv", steps, loss, lrs)), float(clean[-1])


def _final(result, form):
    prediction = result["forms"][form]["predictions"][0]
    assert prediction["x"] == TOTAL
    return prediction["loss"], prediction["pi"]


@pytest.mark.parametrize("observed", ["fit_fraction", "in_progress"])
def test_prior_predicts_a_wsd_run_before_its_decay(tmp_path, capsys, references, target, observed):
    path, truth = target
    if observed == "fit_fraction":  # the completed file, fitted up to 50%: its decay is held out
        args = [path, "--fit-fraction", "0.5"]
    else:  # a run in progress at 50%: no lr logged beyond it, the schedule from the command line
        steps, loss, lrs, _ = wsd_curve(e=2.1, a=0.7, seed=4)
        half = steps <= TOTAL // 2
        partial = write_csv(tmp_path / "partial.csv", steps[half], loss[half], lrs)
        args = [str(partial), "--schedule", "wsd", "--total-steps", str(TOTAL), "--peak-lr", str(PEAK),
                "--warmup-steps", str(WARMUP), "--decay-frac", str(DECAY_FRAC), "--min-lr-ratio", str(MIN_RATIO)]
    out = tmp_path / "out"
    assert main(["scaling", "curve", *args, "--reference", *references, *BOOT, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("annealing bonus B = ") == 1 and "multi_power+prior:" in printed
    assert printed.index("annealing bonus B = ") < printed.index("power:")
    result = json.loads((out / "curve.json").read_text())
    assert set(result["forms"]) == {"power", "multi_power", "lr_area", "multi_power+prior"}
    prior = AnnealPrior.from_dict(result["anneal_prior"])
    assert prior.n_runs == 3 and 0.1 < prior.ratio < 0.2  # B = 0.15 (E + A), close to 0.15 x the final loss
    assert result["anneal_prior_from"] == references
    plain, _ = _final(result, "multi_power")
    with_prior, (lo, hi) = _final(result, "multi_power+prior")
    assert abs(with_prior - truth) < 0.5 * abs(plain - truth)  # the plain fit sees no decay and misses its bonus
    assert abs(with_prior / truth - 1) < 0.03
    assert lo < truth < hi
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_saved_prior_reads_back_and_gives_the_same_prediction(tmp_path, capsys, references, target):
    path, _ = target
    saved = tmp_path / "priors" / "wsd.json"
    assert main(["scaling", "curve", path, "--fit-fraction", "0.5", "--reference", *references,
                 "--save-prior", str(saved), *BOOT, "--out", str(tmp_path / "a"), "--no-plots"]) == 0
    assert f"wrote {saved}" in capsys.readouterr().out
    prior = AnnealPrior.load(saved)
    expected = fit_anneal_prior((c.steps, c.loss, c.lrs) for c in map(load_curve, references))
    assert prior == expected
    from_references = json.loads((tmp_path / "a" / "curve.json").read_text())
    assert AnnealPrior.from_dict(from_references["anneal_prior"]) == prior

    assert main(["scaling", "curve", path, "--fit-fraction", "0.5", "--prior", str(saved), *BOOT,
                 "--out", str(tmp_path / "b"), "--no-plots"]) == 0
    from_file = json.loads((tmp_path / "b" / "curve.json").read_text())
    assert from_file["anneal_prior"] == from_references["anneal_prior"]
    assert from_file["anneal_prior_from"] == [str(saved)]
    assert from_file["forms"]["multi_power+prior"] == from_references["forms"]["multi_power+prior"]


def _refusal_cases(tmp_path, references, target):
    """``name -> (argv after FILE, main FILE, text (or texts) the error must hold)``."""
    path, _ = target
    steps, loss, lrs, _ = wsd_curve(seed=5)
    no_lr = write_csv(tmp_path / "no_lr.csv", steps, loss)
    cut = write_jsonl(tmp_path / "cut_short.jsonl", steps, loss, lrs, lr_only_after=600)
    constant = write_csv(tmp_path / "constant.csv", steps, loss, np.full(TOTAL, PEAK))
    good = tmp_path / "good_prior.json"
    good.write_text(json.dumps(AnnealPrior(0.15, 0.2, 3).to_dict()))
    broken = tmp_path / "broken_prior.json"
    broken.write_text('{"ratio": 0.15, "log_sd": ')
    negative = tmp_path / "negative_prior.json"
    negative.write_text(json.dumps({"ratio": -0.15, "log_sd": 0.2, "n_runs": 3}))
    save = ["--save-prior", str(tmp_path / "saved.json")]
    refs = ["--reference", *references]
    return {
        "reference without lr": ([*refs[:3], str(no_lr), *save], path,
                                 f"--reference {str(no_lr)!r} logs no learning rate"),
        "reference cut short": ([*refs[:2], str(cut), *save], path,
                                f"--reference {str(cut)!r}: reference run 2: its curve ends at step 600, before the "
                                "end of its schedule (1000)"),
        "reference never decays": (["--reference", str(constant), *save], path,
                                   f"--reference {str(constant)!r}: reference run 1: its schedule never lowers the "
                                   "learning rate"),
        "prior and reference": ([*refs, "--prior", str(good)], path, "--reference and --prior"),
        "save without reference": (["--prior", str(good), *save], path,
                                   f"--save-prior {str(tmp_path / 'saved.json')!r} keeps the prior pooled from "
                                   "--reference runs"),
        "malformed prior": (["--prior", str(broken)], path, f"anneal prior file {str(broken)!r} is not JSON"),
        "negative prior": (["--prior", str(negative)], path,
                           (f"anneal prior file {str(negative)!r}: anneal prior", "ratio=-0.15 must be > 0")),
        "missing prior": (["--prior", str(tmp_path / "none.json")], path,
                          f"--prior {str(tmp_path / 'none.json')!r} does not exist"),
        "prior without lrs": (["--prior", str(good)], str(no_lr),
                              "--prior needs the learning rate of every step: log an lr column or give --schedule "
                              f"({str(no_lr)!r}"),
        "reference without lrs": (refs, str(no_lr), "--reference needs the learning rate of every step"),
    }


REFUSALS = ["reference without lr", "reference cut short", "reference never decays", "prior and reference",
            "save without reference", "malformed prior", "negative prior", "missing prior", "prior without lrs",
            "reference without lrs"]


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_prior_settings_are_refused_with_one_line(tmp_path, capsys, references, target, case):
    flag_args, main_file, message = _refusal_cases(tmp_path, references, target)[case]
    out = tmp_path / "out"
    code = main(["scaling", "curve", main_file, "--fit-fraction", "0.5", *flag_args, *BOOT, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tgrow scaling: error: ") and "Traceback" not in captured.err
    for text in (message,) if isinstance(message, str) else message:
        assert text in lines[0]
    assert "fitted" not in captured.out  # refused before the curve was fitted
    assert not out.exists() and not (tmp_path / "saved.json").exists()


def test_a_schedule_that_never_decays_leaves_the_prior_out(tmp_path, capsys, references):
    steps, loss, _, _ = wsd_curve(seed=6)
    path = write_csv(tmp_path / "constant.csv", steps, loss, np.full(TOTAL, PEAK))
    assert main(["scaling", "curve", str(path), "--fit-fraction", "0.5", "--reference", *references, *BOOT,
                 "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    assert "the prior has nothing to say" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "curve.json").read_text())
    assert "multi_power+prior" not in result["forms"] and result["anneal_prior"]["n_runs"] == 3

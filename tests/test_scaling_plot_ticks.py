"""Log axes of the scaling plots read as plain numbers ("20", "300"), not "2x10^1"."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")


@pytest.mark.parametrize(("lo", "hi", "expected", "unexpected"),
                         [(20, 300, {"20", "30", "50", "100", "200", "300"}, set()),
                          (10, 1e6, {"10", "100", "1000", "10000", "100000"}, {"20", "30", "50"})])
def test_log_axis_labels_are_plain_numbers(lo, hi, expected, unexpected):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transformer_grow.scaling.plots import _plain_log_axis

    fig, ax = plt.subplots()
    ax.plot([lo, hi], [1.0, 2.0])
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    _plain_log_axis(ax.xaxis)
    fig.canvas.draw()
    labels = {t.get_text() for t in ax.get_xticklabels() if t.get_text()}
    plt.close(fig)
    assert expected <= labels and not labels & unexpected
    assert not any("10^" in label or "times" in label for label in labels)

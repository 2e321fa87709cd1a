"""The figures a researcher reads: titled, labelled, whole epochs; report.png tells every curve apart."""
import matplotlib
import pytest
import torch

from eqprop.plots import accuracy_figure, activity_figure
from eqprop.report import Row
from eqprop.report.plot import curve_styles


def test_accuracy_figure_has_a_title_labels_and_whole_epoch_ticks():
    history = [{"epoch": e, "train_acc": 0.5 + 0.1 * e, "test_acc": 0.4 + 0.1 * e} for e in range(1, 4)]
    fig = accuracy_figure(history, "symmetric (beta=0.5): digits / mlp / mse")
    ax = fig.axes[0]
    fig.canvas.draw()
    assert "Accuracy per epoch" in ax.get_title() and "symmetric (beta=0.5)" in ax.get_title()
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "accuracy (%)"
    assert all(float(t).is_integer() for t in ax.get_xticks()), ax.get_xticks()


def test_activity_figure_has_a_title_and_axis_labels():
    fig = activity_figure([torch.rand(8, 20), torch.rand(8, 10)], "epoch 2, symmetric")
    assert "Neural activity" in fig._suptitle.get_text() and "epoch 2" in fig._suptitle.get_text()
    assert [a.get_xlabel() for a in fig.axes] == ["neuron state", "neuron state"]
    assert fig.axes[0].get_ylabel() and fig.axes[1].get_title() == "layer 2 (output)"


def test_report_curves_are_a_colour_family_per_estimator_and_distinct_within_it():
    rows = [Row(est, f"{est} (beta={b})") for est in ("bptt", "one_sided", "random_sign", "symmetric")
            for b in (0.1, 0.2, 0.5)]
    styles = curve_styles(rows)
    assert len({(matplotlib.colors.to_hex(c), ls) for c, ls, _ in styles}) == len(rows)  # no two alike
    for row, (colour, style, marker) in zip(rows, styles):
        r, g, b, _ = colour
        family = {"bptt": abs(r - g) < 0.05 and abs(g - b) < 0.05, "one_sided": b > r, "random_sign": g > r and g > b,
                  "symmetric": r > b}[row.estimator]
        assert family, (row.label, colour)
    # one_sided beta=0.1 and symmetric beta=0.5 (both blue before) are now blue and red
    assert styles[3][0] != styles[11][0]
    # within an estimator: a shade and a line style each
    sym = styles[9:12]
    assert len({s[1] for s in sym}) == 3 and len({s[0] for s in sym}) == 3


@pytest.mark.parametrize("n", [1, 5])
def test_any_number_of_settings_gets_styles(n):
    assert len(curve_styles([Row("symmetric", str(i)) for i in range(n)])) == n

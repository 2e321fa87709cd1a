"""What the GDU check reports: the sign error's zero threshold, the one-sided and symmetric metrics,
the bars, the plotted entries and the files mode=gducheck writes."""
import json

import pytest
import torch

from eqprop.estimators import RandomSign, Symmetric
from eqprop.gdu import SIGN_ZERO_EPS, full_check, sign_error
from eqprop.gdu_plots import entries_with_signal
from tests.helpers import random_batch, small_net
from tests.launch_utils import run_inprocess


def _trace(seed=0, shape=(6, 40)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) + 0.1  # no zero: every entry has a sign


def test_sign_error_of_identical_and_negated_traces():
    b = _trace() * torch.tensor([1.0, -1.0]).repeat(20)
    assert sign_error(b.clone(), b) == 0.0
    assert sign_error(-b, b) == 1.0


def test_rounding_noise_around_an_exact_zero_has_no_sign():
    b = _trace()
    b[:, :10] = 0.0
    e = b.clone()
    e[:, :10] = 1e-19                   # noise against an exact 0
    assert sign_error(e, b) == 0.0
    b[:, :10] = -1e-19                  # noise of the other sign on both sides: still no disagreement
    assert sign_error(e, b) == 0.0
    # a genuine small value (far above SIGN_ZERO_EPS machine epsilons of the scale) keeps its sign
    e[:, :10] = 1e-6
    b[:, :10] = -1e-6
    assert 1e-6 > 100 * SIGN_ZERO_EPS * torch.finfo(torch.float64).eps
    assert sign_error(e, b) == pytest.approx(10 / 40)


def test_the_threshold_follows_the_traces_dtype_and_scale():
    b = _trace().float() * 1e-3
    e = b.clone()
    e[:, 0], b[:, 0] = 1e-12, -1e-12    # float32 rounding noise relative to a 1e-3 scale
    assert sign_error(e, b) == 0.0
    assert sign_error(e.double(), b.double()) == pytest.approx(1 / 40)  # in float64 it is a real value


def test_plotted_entries_are_the_largest_gradients():
    t = torch.zeros(5, 100, dtype=torch.float64)
    t[:, 17], t[:, 42], t[:, 63] = 0.5, -2.0, 1.0  # the rest is flat zero, as a black border pixel
    assert entries_with_signal(t, 3).tolist() == [42, 63, 17]
    assert entries_with_signal(t.view(5, 10, 10), 2).tolist() == [42, 63]


@pytest.fixture(scope="module")
def vf_cnn():
    model = small_net("vf_cnn", loss="mse", activation="tanh")
    return (model, *random_batch(model, n=3))


def test_full_check_reports_one_sided_and_symmetric(vf_cnn):
    model, x, y = vf_cnn
    c = full_check(model, x, y, 20, 5, Symmetric(0.2))
    assert c["checked"] == "symmetric" and c["betas"] == [0.2, -0.2]
    assert list(c["metrics"]) == ["one_sided(+beta)", "one_sided(-beta)", "symmetric"]
    weights = [k for k, _ in model.named_parameters() if k.endswith("weight")]
    assert list(c["bars"]) == weights
    # the bars' definition, on the summed traces of one weight
    k = "synapses.1.weight"
    g = c["bptt"][k].sum(0)
    d = [(c["ep"][name][k].sum(0) - g).abs() for name in ("one_sided(+beta)", "one_sided(-beta)", "symmetric")]
    assert c["bars"][k] == pytest.approx((2 * d[2] / (d[0] + d[1])).mean().item())
    # the symmetric estimate is closer to BPTT than the one-sided ones on average
    assert 0.0 < c["bars"][k] < 1.0


def test_full_check_of_a_one_sided_estimate_names_its_drawn_sign(vf_cnn):
    model, x, y = vf_cnn
    c = full_check(model, x, y, 20, 5, RandomSign(0.2), torch.Generator().manual_seed(0))  # draws -beta
    assert c["checked"] == "one_sided(-beta)" and c["betas"] == [-0.2] and "bars" not in c
    assert list(c["metrics"]) == ["one_sided(+beta)", "one_sided(-beta)"]


def test_gducheck_writes_metrics_figures_and_traces(tmp_path):
    run_inprocess(["mode=gducheck", "task=digits", "model=vf_cnn", "estimator=symmetric", "model.channels=[3,4]",
                   "dynamics.T1=10", "dynamics.T2=4", "device=cpu", "dtype=float64"], tmp_path)
    g = json.loads((tmp_path / "gdu.json").read_text())
    assert g["n_examples"] == 20  # gdu.n_examples=null: the original's 20
    assert set(g["metrics"]) == {"one_sided(+beta)", "one_sided(-beta)", "symmetric"}
    assert set(g["bars"]) == {"synapses.0.weight", "synapses.1.weight", "synapses.2.weight",
                              "backward_synapses.0.weight", "backward_synapses.1.weight"}
    for name in ("gdu.png", "bars.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    traces = torch.load(tmp_path / "gdu_traces.pt", weights_only=True)
    assert traces["checked"] == "symmetric" and set(traces["ep"]) == set(g["metrics"])
    assert traces["bptt"]["synapses.0.weight"].shape == (4, 3, 1, 3, 3)  # T2 steps of the 3x1x3x3 weight
    assert traces["bptt"]["neurons_0"].shape[1] == 20


def test_gducheck_honours_n_examples(tmp_path):
    run_inprocess(["mode=gducheck", "task=digits", "estimator=one_sided", "gdu.n_examples=3", "dynamics.T1=6",
                   "dynamics.T2=3", "device=cpu"], tmp_path)
    g = json.loads((tmp_path / "gdu.json").read_text())
    assert g["n_examples"] == 3 and g["checked"] == "one_sided(+beta)"
    assert list(g["metrics"]) == ["one_sided(+beta)"] and "bars" not in g
    assert not (tmp_path / "bars.png").exists()

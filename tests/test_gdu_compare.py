"""The GDU check's metrics on traces whose answer is known: identical traces have no sign error,
negated ones disagree everywhere, and symmetric EP on a converged float64 net agrees with BPTT."""
import torch

from eqprop.estimators import Symmetric
from eqprop.gdu import compare, gdu_check
from tests.helpers import random_batch, small_net


def _traces(seed=0):
    g = torch.Generator().manual_seed(seed)
    # values of order 1, far from zero: any near-zero tolerance of the sign error leaves them counted
    mag = 0.5 + torch.rand(5, 4, 3, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(5, 4, 3, generator=g) < 0.5, -1.0, 1.0).double()
    return {"w": mag * sign, "neurons_0": -mag * sign}


def test_identical_traces_have_no_sign_error_and_no_rmse():
    t = _traces()
    for key, m in compare(t, {k: v.clone() for k, v in t.items()}).items():
        assert m["sign_error"] == 0.0, key
        assert m["rmse"] < 1e-9, key


def test_negated_traces_disagree_in_sign_everywhere():
    t = _traces()
    for key, m in compare(t, {k: -v for k, v in t.items()}).items():
        assert m["sign_error"] == 1.0, key
        assert m["rmse"] > 1.0, key  # |e - b| = 2 |b|: twice the RMS


def test_half_the_signs_flipped_is_a_sign_error_of_one_half():
    t = _traces()
    flip = torch.ones(5, 4, 3, dtype=torch.float64)
    flip[:, :2] = -1.0
    m = compare(t, {k: v * flip for k, v in t.items()})
    assert all(v["sign_error"] == 0.5 for v in m.values()), m


def test_symmetric_ep_on_a_converged_net_matches_bptt_in_sign_and_size():
    """The hard sigmoid (slope 1 where unsaturated) keeps the sign errors clear of traces that are
    zero but for rounding; the neurons' rmse is left out (saturated units: EP moves them by 0)."""
    model = small_net(name="mlp", loss="mse", activation="my_hard_sig")
    x, y = random_batch(model, n=6)
    _, _, m = gdu_check(model, x, y, T1=150, T2=10, estimate=Symmetric(0.01))
    params = [k for k in m if not k.startswith("neurons_")]
    assert params and len(m) > len(params)
    for key in params:
        assert m[key]["rmse"] < 1e-3, (key, m[key])
    for key, v in m.items():
        assert v["sign_error"] < 0.02, (key, v)

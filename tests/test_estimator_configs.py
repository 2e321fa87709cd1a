"""The n_point and holomorphic estimators from the config: what they refuse (before any compute,
exit 2, with a message naming what can run), and short real runs of each through launch.py."""
import pytest

from eqprop.config import ConfigError, from_dict
from tests.fault_utils import ONE_THREAD
from tests.launch_utils import TINY, compose_cfg, launch_cli, read_metrics

ANALYTIC = ["model.activation=tanh"]
BAD = {
    "points < 2": (["estimator=n_point", "estimator.points=1"], ["estimator.points=1 must be an integer >= 2"]),
    "holomorphic points < 2": (["estimator=holomorphic", "estimator.points=0"] + ANALYTIC,
                               ["estimator.points=0 must be an integer >= 2"]),
    "odd points for n_point": (["estimator=n_point", "estimator.points=5"],
                               ["estimator.points=5 must be even for estimator=n_point", "use 4 or 6"]),
    "holomorphic hard sigmoid": (["estimator=holomorphic", "model.activation=my_hard_sig"],
                                 ["model.activation=my_hard_sig (not analytic", "tanh, sigmoid, my_sigmoid"]),
    "holomorphic max pooling": (["estimator=holomorphic", "model=cnn", "task=digits", "model.pools=mm"] + ANALYTIC,
                                ["model.pools=mm (max pooling is not analytic)", "average pooling"]),
    "study: bptt is the reference": (["+experiment=gdu_study", "gdu.estimators=[symmetric,bptt]"],
                                     ["gdu.estimators has 'bptt'", "against BPTT, its reference"]),
    "study: holomorphic on max pooling": (["+experiment=gdu_study", "gdu.estimators=[holomorphic]", "model.pools=ma"],
                                          ["gdu.estimators has holomorphic", "max pooling is not analytic"]),
    "holomorphic vector field": (["estimator=holomorphic", "model=vf_mlp"] + ANALYTIC,
                                 ["cannot run model=vf_mlp", "model=mlp or model=cnn"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_refused_with_what_can_run(name):
    over, fragments = BAD[name]
    with pytest.raises(ConfigError) as err:
        from_dict(compose_cfg(over))
    for f in fragments:
        assert f in str(err.value), (f, str(err.value))


def test_accepted():
    for over in (["estimator=n_point"], ["estimator=n_point", "estimator.points=2"],
                 ["estimator=holomorphic", "estimator.points=3"] + ANALYTIC,
                 ["estimator=holomorphic", "model=cnn", "task=digits", "model.pools=aa"] + ANALYTIC):
        assert from_dict(compose_cfg(over)).estimator.name == over[0].split("=")[1]


def test_launch_refuses_with_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    p = launch_cli(["estimator=holomorphic", "model.activation=my_hard_sig", f"hydra.run.dir={run_dir}",
                    "device=cpu"], timeout=120, env=ONE_THREAD)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "estimator=holomorphic cannot run model.activation=my_hard_sig" in p.stderr
    assert "Traceback" not in p.stderr and not run_dir.exists()


@pytest.mark.parametrize("est", [["estimator=n_point"], ["estimator=holomorphic", "model=cnn", "model.pools=aa"]])
def test_trains(tmp_path, est):
    p = launch_cli(est + ANALYTIC + TINY + ["task=digits", "dtype=float64", "logger=none"], run_dir=tmp_path,
                   timeout=300, env=ONE_THREAD, check=True)
    assert p.returncode == 0
    metrics = read_metrics(tmp_path)
    assert metrics, p.stdout[-2000:]
    assert all(v == v for m in metrics for v in m.values() if isinstance(v, float)), metrics  # no NaN


@pytest.mark.parametrize("est", ["n_point", "holomorphic"])
def test_gducheck_of_a_run_of_each(tmp_path, est):
    """mode=gducheck checks the estimator's own traces beside one-sided EP at +-beta (not at n_point's
    +-2 beta, nor at holomorphic EP's complex betas, which gdu.json writes as re/im)."""
    import json

    launch_cli(["mode=gducheck", f"estimator={est}", "task=digits", "model=cnn", "model.pools=aa",
                "model.channels=[4,8]", "dtype=float64", "dynamics.T1=60", "dynamics.T2=10", "logger=none",
                "device=cpu"] + ANALYTIC, run_dir=tmp_path, timeout=300, env=ONE_THREAD, check=True)
    d = json.loads((tmp_path / "gdu.json").read_text())
    assert d["checked"] == est and sorted(d["metrics"]) == sorted([est, "one_sided(+beta)", "one_sided(-beta)"])
    if est == "holomorphic":
        assert d["betas"] == [0.5, {"re": 0.0, "im": 0.5}, -0.5, {"re": 0.0, "im": -0.5}]
    else:
        assert d["betas"] == [0.5, -0.5, 1.0, -1.0]
    assert (tmp_path / "gdu.png").exists()

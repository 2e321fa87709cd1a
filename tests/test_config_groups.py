"""Every option of every config group composes into a job that trains (a few iterations)."""
import itertools

import pytest

from tests.launch_utils import TINY, compose_cfg, read_metrics, run_inprocess

MODELS = ["mlp", "vf_mlp", "cnn", "vf_cnn"]
ESTIMATORS = ["one_sided", "random_sign", "symmetric", "bptt"]
LOSSES = ["mse", "cel"]
OPTIMIZERS = ["sgd", "adam"]
TASKS = ["mnist5k", "digits"]


@pytest.mark.parametrize("task", TASKS + ["mnist", "cifar10", "fashion_mnist", "cifar100", "svhn"])
@pytest.mark.parametrize("model", MODELS)
def test_groups_compose(task, model):
    d = compose_cfg([f"task={task}", f"model={model}"])
    assert d["task"]["name"] == task and d["model"]["name"] == model
    from eqprop.config import from_dict

    cfg = from_dict(d)  # typed and validated, including the task-dependent shapes
    assert cfg.model.name == model


# Where 10 batches of digits visibly train the dense net (cross-entropy, or Adam), the run must beat
# its initial net; MSE with plain SGD (lr 0.2) takes more batches than a quick test should.
LEARNS_IN_10_BATCHES = {("mlp", loss, opt, "digits")
                        for loss, opt in (("cel", "sgd"), ("cel", "adam"), ("mse", "adam"))}


def _initial_test_metrics(overrides, run_dir):
    """The untrained net's test accuracy and loss: the same seed builds the same initial weights."""
    import torch

    from eqprop.config import from_dict
    from eqprop.engine import evaluate
    from eqprop.run_builder import Run

    run = Run(from_dict(compose_cfg(overrides)), run_dir, torch.device("cpu"))
    return evaluate(run.model, run.test, run.dyn)


@pytest.mark.parametrize("model,estimator,loss,optimizer,task",
                         list(itertools.product(MODELS, ESTIMATORS, LOSSES, OPTIMIZERS, TASKS)))
def test_every_combination_trains(tmp_path, model, estimator, loss, optimizer, task):
    over = [f"model={model}", f"estimator={estimator}", f"loss={loss}", f"optimizer={optimizer}",
            f"task={task}"] + TINY
    learns = (model, loss, optimizer, task) in LEARNS_IN_10_BATCHES
    if learns:
        over.append("task.limit_train=320")  # 10 batches of 32
        acc0, loss0 = _initial_test_metrics(over, tmp_path)
    result = run_inprocess(over, tmp_path)
    m = read_metrics(tmp_path)
    assert len(m) == 1 and m[0]["status"] == "ok"
    assert 0.0 <= m[0]["test_acc"] <= 1.0 and m[0]["train_loss"] == m[0]["train_loss"]  # not NaN
    assert result["epochs"] == 1
    assert (tmp_path / "checkpoint.pt").exists()
    if learns:  # the test loss falls by 5 % or more, and accuracy is at least twice chance (10 classes)
        assert m[0]["test_loss"] < 0.95 * loss0, (loss0, m[0])
        assert m[0]["test_acc"] >= 0.2, (acc0, m[0])


def test_the_sweep_label_is_settable_and_a_stored_null_sweep_still_loads():
    from eqprop.config import ConfigError, from_dict

    assert from_dict(compose_cfg(["sweep.name=reference"])).sweep.name == "reference"
    stored = compose_cfg([])
    stored["sweep"] = None  # how configs stored while `sweep` was optional say "no sweep"
    assert from_dict(stored).sweep.name == ""
    with pytest.raises(ConfigError, match="unknown config key sweep.copy"):
        from_dict({**compose_cfg([]), "sweep": {"copy": "x"}})

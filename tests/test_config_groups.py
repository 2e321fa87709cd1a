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


@pytest.mark.parametrize("model,estimator,loss,optimizer,task",
                         list(itertools.product(MODELS, ESTIMATORS, LOSSES, OPTIMIZERS, TASKS)))
def test_every_combination_trains(tmp_path, model, estimator, loss, optimizer, task):
    over = [f"model={model}", f"estimator={estimator}", f"loss={loss}", f"optimizer={optimizer}",
            f"task={task}"] + TINY
    result = run_inprocess(over, tmp_path)
    m = read_metrics(tmp_path)
    assert len(m) == 1 and m[0]["status"] == "ok"
    assert 0.0 <= m[0]["test_acc"] <= 1.0 and m[0]["train_loss"] == m[0]["train_loss"]  # not NaN
    assert result["epochs"] == 1
    assert (tmp_path / "checkpoint.pt").exists()

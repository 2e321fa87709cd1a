"""Layer-wise optimisers: each layer of weights is stepped with its own lr, from the config to the
optimiser to metrics.jsonl, and the cosine schedule anneals from that lr to eta_min over T_max epochs."""
import math

import pytest
import torch

from eqprop.config import from_dict
from eqprop.models import build_model
from eqprop.losses import build_loss
from eqprop.optim import build_optimizer
from tests.launch_utils import TINY, compose_cfg, read_metrics, run_inprocess

LRS = [0.1, 0.05]


def _built(*overrides):
    cfg = from_dict(compose_cfg(["task=digits", *overrides]))
    torch.manual_seed(0)
    model = build_model(cfg.model, build_loss(cfg.loss.name, cfg.loss.softmax_readout), cfg.task.in_channels,
                        cfg.task.in_size)
    return cfg, model, *build_optimizer(cfg.optimizer, model)


def test_each_parameter_group_holds_its_layers_lr():
    cfg, model, opt, _ = _built(f"optimizer.lrs=[{LRS[0]},{LRS[1]}]")
    assert [g["lr"] for g in opt.param_groups] == LRS
    groups = model.layer_groups()
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [[id(p) for p in g] for g in groups]


def test_a_step_moves_each_layer_by_its_own_lr():
    _, model, opt, _ = _built(f"optimizer.lrs=[{LRS[0]},{LRS[1]}]")  # sgd, no momentum, no weight decay
    before = [[p.detach().clone() for p in g] for g in model.layer_groups()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    for lr, group, old in zip(LRS, model.layer_groups(), before):
        for p, q in zip(group, old):
            assert torch.allclose(q - p.detach(), torch.full_like(q, lr), rtol=0, atol=1e-7), lr


def test_metrics_record_the_layer_lrs(tmp_path):
    run_inprocess(TINY + ["task=digits", f"optimizer.lrs=[{LRS[0]},{LRS[1]}]"], tmp_path)
    assert read_metrics(tmp_path)[0]["lrs"] == LRS


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_the_cosine_schedule_anneals_each_lr_to_eta_min_over_t_max_epochs(name):
    _, _, opt, sched = _built(f"optimizer={name}", f"optimizer.lrs=[{LRS[0]},{LRS[1]}]", "optimizer.lr_decay=true",
                              "optimizer.T_max=10", "optimizer.eta_min=0.001")
    for epoch in range(1, 11):
        opt.step()
        sched.step()
        for lr, g in zip(LRS, opt.param_groups):
            want = 0.001 + (lr - 0.001) * (1 + math.cos(math.pi * epoch / 10)) / 2
            assert g["lr"] == pytest.approx(want, rel=1e-9, abs=1e-12), (epoch, lr, g["lr"])

"""Dropout: masks per example held through every phase of a step, EP still exact for the masked
net, BPTT through the same masked dynamics, and nothing at evaluation."""
import torch

from eqprop.dynamics import Dynamics
from eqprop.estimators import BPTT, Symmetric
from eqprop.models.dropout import dropout_masks, has_masks
from tests.helpers import random_batch, random_state, small_net
from tests.launch_utils import TINY, read_metrics, run_inprocess
from tests.test_dynamics_step import autograd_step


def _net():
    return small_net("cnn", "cel", True, pools="mm", fc=[6, 5], activation="my_sigmoid")


def test_masked_step_is_sigma_of_autograd_of_the_masked_phi():
    model = _net()
    x, y = random_batch(model)
    state = random_state(model)
    torch.manual_seed(0)
    with dropout_masks(model, [0.8, 0.7, 0.6], x.shape[0]):
        assert has_masks(model)
        want = autograd_step(model, x, y, state, 0.5)
        got = model.step(model.input_drive(x), state, 0.5, y)
    plain = model.step(model.input_drive(x), state, 0.5, y)
    assert not has_masks(model)
    for g, w, p in zip(got, want, plain):
        assert torch.allclose(g, w, rtol=0, atol=1e-10)
    assert any(not torch.allclose(g, p) for g, p in zip(got, plain))  # the masks did something


def test_symmetric_ep_matches_bptt_on_the_masked_net():
    model = _net()
    x, y = random_batch(model, n=6)
    dyn = Dynamics(T1=150, T2=100)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    with dropout_masks(model, [1.0, 0.7, 0.8], x.shape[0]):
        ep = Symmetric(0.01)(model, x, y, dyn, gen).grads
        bp = BPTT()(model, x, y, dyn, gen).grads
    e = torch.cat([ep[p].flatten() for p in model.parameters()])
    b = torch.cat([bp[p].flatten() for p in model.parameters()])
    assert ((e - b).norm() / b.norm()).item() < 1e-3


def test_training_with_dropout_runs_and_resumes(tmp_path):
    over = TINY + ["model=cnn", "loss=cel", "model.dropouts=[1.0,0.8,1.0]"]
    run_inprocess(over + ["epochs=2"], tmp_path / "a")
    run_inprocess(over + ["epochs=1"], tmp_path / "b")
    run_inprocess(over + ["epochs=2", f"resume={tmp_path / 'b'}"], tmp_path / "b")
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["train_acc"] for r in a] == [r["train_acc"] for r in b]
    nodrop = tmp_path / "c"
    run_inprocess(TINY + ["model=cnn", "loss=cel", "epochs=2"], nodrop)
    assert [r["train_loss"] for r in read_metrics(nodrop)] != [r["train_loss"] for r in a]

"""The training recipe's contracts with its pieces: an estimator that moves the weights itself (cep) is
not stepped again by the engine; a command reads its checkpoint once."""
import torch

from tests.launch_utils import TINY, compose_cfg, read_metrics, run_inprocess

# one batch of 32 digits (the whole training slice), in float64 so that the only difference between the
# two ways of running it is the order of the examples inside the batch (summation rounding)
ONE_CEP_BATCH = TINY + ["task=digits", "estimator=cep", "task.limit_train=32", "dtype=float64"]


def test_a_cep_run_moves_the_weights_by_the_estimators_own_steps_and_nothing_more(tmp_path):
    """CEP steps the optimiser at each of its T2 nudged steps and says so (Estimate.applied): the engine
    must not take one more optimiser step with the summed update it reports."""
    from eqprop.config import from_dict
    from eqprop.run_builder import Run

    run_inprocess(ONE_CEP_BATCH, tmp_path / "run")
    assert [m["epoch"] for m in read_metrics(tmp_path / "run")] == [1]
    trained = torch.load(tmp_path / "run" / "final_model.pt", weights_only=True)["model"]

    # the same initial net (the same seed), the same 32 examples, given to the estimator alone
    ref = Run(from_dict(compose_cfg(ONE_CEP_BATCH)), tmp_path / "ref", torch.device("cpu"))
    initial = {k: v.clone() for k, v in ref.model.state_dict().items()}
    (_, x, y), = list(ref.train.iterate())
    est = ref.estimator(ref.model, x, y, ref.dyn, torch.Generator().manual_seed(0))
    assert est.applied
    by_cep = ref.model.state_dict()

    lr = ref.cfg.optimizer.lr
    extra_step = max(lr * g.abs().max().item() for g in est.grads.values())
    assert extra_step > 1e-4  # one more step with the summed update would be plainly visible
    moved = max((by_cep[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-4  # and CEP's own steps did move the weights
    for k in by_cep:
        assert torch.allclose(trained[k], by_cep[k], rtol=0, atol=1e-10), (k, (trained[k] - by_cep[k]).abs().max())


def _count_loads(monkeypatch, name: str) -> list:
    """Every torch.load of a file called `name` (the real torch.load still does the loading)."""
    seen, real = [], torch.load

    def counting(f, *args, **kwargs):
        if str(f).endswith(name):
            seen.append(str(f))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return seen


def test_a_command_reads_its_checkpoint_once(tmp_path, monkeypatch):
    run = tmp_path / "run"
    over = TINY + ["task=digits", "task.limit_train=32"]
    run_inprocess(over, run)

    loads = _count_loads(monkeypatch, "checkpoint.pt")
    run_inprocess(over + ["epochs=2", f"resume={run}"], run)  # checked, then resumed: one read
    assert loads == [str(run / "checkpoint.pt")]
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]

    models = _count_loads(monkeypatch, "model.pt")
    run_inprocess(["mode=evaluate", f"load_path={run}", "task=digits", "device=cpu", "task.limit_train=32",
                   "task.limit_test=50", "dynamics.T1=6"], run)
    assert models == [str(run / "model.pt")]

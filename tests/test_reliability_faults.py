"""Runs that survive faults, on real launch.py processes: signals save a mid-epoch checkpoint and the
resumed run is bit-identical to an uninterrupted one; kill -9 during a save loses nothing; NaN/Inf
stops a run (exit 3) without stopping the rest of a sweep; broken checkpoints are refused clearly."""
import json
import signal
import time

import pytest
import torch

from eqprop import checkpoint as ckpt
from eqprop.config import ConfigError
from eqprop.divergence import Diverged
from tests.fault_utils import ONE_THREAD, Job, one_thread, same_weights, write_fake_mnist  # noqa: F401
from tests.launch_utils import TINY as _TINY
from tests.launch_utils import compose_cfg, launch_cli, read_metrics, run_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = _TINY + ["task=digits"]  # no 2 s csv parse in every process
# 32 batches an epoch, so that a signal sent as epoch 2 starts lands well inside it
BASE = ["epochs=2", "task.limit_train=1024", "task.limit_test=50", "task.batch_size=32",
        "dynamics.T1=20", "dynamics.T2=6", "device=cpu"]
N_BATCHES = 1024 // 32

SIGNAL_CASES = {
    # the scheduler, momentum buffers and the estimator's random signs must all resume
    "SIGTERM": (signal.SIGTERM, ["task=digits", "estimator=random_sign", "optimizer.lr_decay=true", "optimizer.T_max=2",
                                 "optimizer.momentum=0.9"]),
    # Ctrl-C reaches the whole process group, DataLoader workers included (a torchvision task on disk)
    "SIGINT": (signal.SIGINT, ["task=mnist", "task.download=false", "task.num_workers=2", "optimizer=adam"]),
    # dropout masks draw from torch's global RNG: its state mid-epoch must resume too
    "SIGTERM dropout": (signal.SIGTERM, ["task=digits", "model.dropouts=[0.7,1.0]"]),
    "SIGUSR1": (signal.SIGUSR1, ["task=digits", "model=cnn", "model.channels=[4,8]", "estimator=bptt",
                                 "dynamics.T1=10", "dynamics.T2=4"]),
}


def _without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.parametrize("name", list(SIGNAL_CASES))
def test_signal_saves_mid_epoch_and_resume_is_exact(tmp_path, name):
    signum, extra = SIGNAL_CASES[name]
    name = signal.Signals(signum).name
    over = BASE + extra
    if name == "SIGINT":
        over.append(f"task.data_dir={write_fake_mnist(tmp_path / 'data', 1024, 50)}")
    part, full = tmp_path / "part", tmp_path / "full"

    job = Job(over, tmp_path / "job", run_dir=part)
    job.wait_until(lambda: "[eqprop] epoch 1/2" in job.stdout)  # printed last thing before epoch 2
    t0 = time.monotonic()  # ... then epoch 2's progress bar, or a moment: past the end-of-epoch check
    job.wait_until(lambda: "epoch 2/2" in job.stderr or time.monotonic() - t0 > 0.2)
    job.signal(signum, group=(name == "SIGINT"))
    rc = job.wait()
    assert rc == 128 + signum, (rc, job.stderr[-3000:])
    assert f"stopped by {name} at epoch 2, batch" in job.stderr and f"resume={part}" in job.stderr

    state = torch.load(part / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["batch"] < N_BATCHES, (state["epoch"], state["batch"])
    written = (part / "metrics.jsonl").read_bytes()
    assert [r["epoch"] for r in read_metrics(part)] == [1]

    run_inprocess(over + [f"resume={part}"], part)
    run_inprocess(over, full)

    assert (part / "metrics.jsonl").read_bytes().startswith(written)  # appended to, never rewritten
    assert [r["epoch"] for r in read_metrics(part)] == [1, 2]
    assert _without_seconds(read_metrics(part)) == _without_seconds(read_metrics(full))
    assert same_weights(part / "final_model.pt", full / "final_model.pt")


def _save_in_flight(run, largest: list) -> bool:
    """A checkpoint save under way: its temp file exists (save_atomic), or checkpoint.pt itself is
    shorter than it has been (a save writing in place has truncated it)."""
    if any(run.glob(".checkpoint.pt.*.tmp")):
        return True
    try:
        size = (run / "checkpoint.pt").stat().st_size
    except FileNotFoundError:
        return False
    largest[0] = max(largest[0], size)
    return size < largest[0]


def test_kill_9_during_a_checkpoint_save_loses_nothing(tmp_path):
    # a wide layer makes each save take a while; one tiny batch an epoch makes saves frequent
    over = ["task=digits", "model.archi=[64,2048,2048,10]", "task.limit_train=32", "task.batch_size=32",
            "task.limit_test=10", "dynamics.T1=1", "dynamics.T2=1", "device=cpu"]
    run = tmp_path / "run"
    for attempt in range(3):  # the save may end between seeing it under way and the kill: go again
        job = Job(over + ["epochs=1000"], tmp_path / f"job{attempt}", run_dir=run)  # reruns resume there
        job.wait_until(lambda: (run / "checkpoint.pt").exists())
        largest = [0]
        job.wait_until(lambda: _save_in_flight(run, largest), timeout=120, poll=0.0005)
        job.kill()  # SIGKILL: no handler, no clean-up
        # whatever the kill interrupted, the checkpoint on disk is a whole one (a torn file fails here)
        state = ckpt.load(run / "checkpoint.pt", required=("model", "epoch", "history"))
        if list(run.glob(".checkpoint.pt.*.tmp")):
            break
    assert list(run.glob(".checkpoint.pt.*.tmp")), "the kill never caught a save half-way"

    done = state["epoch"]
    assert done >= 1 and [r["epoch"] for r in read_metrics(run)] == list(range(1, done + 1))

    run_inprocess(over + [f"epochs={done + 1}", f"resume={run}"], run)
    assert not list(run.glob(".*.tmp"))  # the torn temp file is cleaned up
    epochs = [r["epoch"] for r in read_metrics(run)]
    assert epochs == list(range(1, done + 2)), epochs  # no epoch lost, none twice
    assert ckpt.load(run / "final_model.pt", required=("model",))["epoch"] == done + 1


def test_divergence_stops_the_run_with_exit_code_3(tmp_path):
    p = launch_cli(SMALL + ["loss=cel", "optimizer.lr=1e38"], run_dir=tmp_path, timeout=300, env=ONE_THREAD)
    assert p.returncode == 3, (p.returncode, p.stderr[-3000:])
    assert "training diverged at epoch 1, batch" in p.stderr and "NaN or Inf in" in p.stderr
    assert "Lower the learning rates" in p.stderr
    last = read_metrics(tmp_path)[-1]
    assert last["status"] == "diverged" and last["non_finite"]
    assert not (tmp_path / "final_model.pt").exists()


def test_divergence_in_states_and_weights_keeps_the_last_good_checkpoint(tmp_path):
    # a linear output layer in the energy (cel without read-out) and a huge lr overflow everything
    with pytest.raises(Diverged, match="NaN or Inf in the free-phase states and the gradient estimates and the "
                                       "weights after the update and the training loss"):
        run_inprocess(SMALL + ["loss=cel", "loss.softmax_readout=false", "optimizer.lr=1e38"], tmp_path / "a")

    # momentum lets the weights grow for two epochs before they overflow in the third
    run = tmp_path / "b"
    with pytest.raises(Diverged, match="at epoch 3, batch 2"):
        run_inprocess(SMALL + ["epochs=3", "optimizer.lr=1e38", "optimizer.momentum=0.9"], run)
    assert [r.get("status") for r in read_metrics(run)] == ["ok", "ok", "diverged"]
    state = ckpt.load(run / "checkpoint.pt", required=("model", "epoch"))
    assert state["epoch"] == 2 and all(torch.isfinite(w).all() for w in state["model"].values())
    run_inprocess(SMALL + ["epochs=3", "optimizer.lr=0.05", "optimizer.momentum=0.9", f"resume={run}"], run)
    assert [r.get("status") for r in read_metrics(run)] == ["ok", "ok", "diverged", "ok"]
    assert read_metrics(run)[-1]["lrs"] == [0.05, 0.05]  # the lower lr applies, momentum buffers kept
    assert ckpt.load(run / "final_model.pt", required=("model",))["epoch"] == 3


def test_resume_with_new_optimiser_settings_follows_their_schedule(tmp_path):
    decay = SMALL + ["optimizer.lr_decay=true", "optimizer.T_max=4", "optimizer.momentum=0.5"]
    run_inprocess(decay + ["epochs=3", "optimizer.lr=0.1"], tmp_path / "planned")
    run_inprocess(decay + ["epochs=1", "optimizer.lr=0.3"], tmp_path / "changed")
    run_inprocess(decay + ["epochs=3", "optimizer.lr=0.1", f"resume={tmp_path / 'changed'}"], tmp_path / "changed")
    planned, changed = read_metrics(tmp_path / "planned"), read_metrics(tmp_path / "changed")
    assert changed[0]["lrs"] != planned[0]["lrs"]
    assert [r["lrs"] for r in changed[1:]] == [r["lrs"] for r in planned[1:]]


def test_a_diverging_job_does_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    p = launch_cli(["-m"] + SMALL + ["loss=cel", "optimizer.lr=1e38,0.05", f"hydra.sweep.dir={sweep}"], timeout=300,
                   env=ONE_THREAD)
    assert p.returncode != 0  # Hydra reports the failed job once the sweep is over
    assert f"{sweep / '0'}: training diverged" in p.stderr
    assert read_metrics(sweep / "0")[-1]["status"] == "diverged"
    assert [r["status"] for r in read_metrics(sweep / "1")] == ["ok"]  # the next job ran to the end
    assert (sweep / "1" / "final_model.pt").exists()


def test_metrics_catch_up_with_the_checkpoint_after_a_crash(tmp_path):
    run_inprocess(SMALL + ["epochs=2"], tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    # a crash after epoch 2's checkpoint, in the middle of appending its line
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:17])
    run_inprocess(SMALL + ["epochs=3", f"resume={tmp_path}"], tmp_path)
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.startswith(lines[0] + "\n" + lines[1][:17])
    whole = [json.loads(s) for s in text.splitlines() if s.startswith("{") and s.endswith("}")]
    assert [r["epoch"] for r in whole] == [1, 2, 3]
    assert whole[1] == json.loads(lines[1])


def _trained_run(tmp_path):
    run = tmp_path / "run"
    run_inprocess(SMALL, run)
    return run


def test_broken_checkpoints_are_refused_naming_the_file(tmp_path):
    run = _trained_run(tmp_path)
    for name in ("checkpoint.pt", "model.pt"):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])  # truncated, as by a full disk

    p = launch_cli(SMALL + [f"resume={run}"], timeout=300, env=ONE_THREAD)
    assert p.returncode == 2, p.stderr[-3000:]
    assert f"checkpoint {run / 'checkpoint.pt'} is corrupted or truncated" in p.stderr
    assert "Traceback" not in p.stderr

    p = launch_cli(["mode=evaluate", f"load_path={run}", "task=digits", "device=cpu", "task.limit_test=50"],
                   timeout=300, env=ONE_THREAD)
    assert p.returncode == 2, p.stderr[-3000:]
    assert f"checkpoint {run / 'model.pt'} is corrupted or truncated" in p.stderr
    assert not (run / "evaluations.jsonl").exists()


class NotPlainData:
    pass


def test_checkpoints_load_weights_only(tmp_path):
    """A checkpoint is tensors and plain data; a file that would need to run code to load is refused."""
    from eqprop.app import prepare

    run = _trained_run(tmp_path)
    for name in ("checkpoint.pt", "model.pt"):
        torch.load(run / name, weights_only=True)  # the real ones load the safe way

    torch.save({"model": NotPlainData(), "architecture": {}, "epoch": 1}, run / "model.pt")
    with pytest.raises(ckpt.CheckpointError, match=f"checkpoint {run / 'model.pt'} holds objects other than tensors"):
        prepare(compose_cfg(["mode=evaluate", f"load_path={run}", "task=digits", "device=cpu"]), run)

    torch.save({"weights": torch.zeros(3)}, run / "checkpoint.pt")  # loads, but is not an eqprop checkpoint
    with pytest.raises(ckpt.CheckpointError, match="not an eqprop checkpoint"):
        prepare(compose_cfg(SMALL + [f"resume={run}"]), run)


def test_resume_refuses_a_run_of_another_architecture(tmp_path):
    from eqprop.app import prepare

    run = _trained_run(tmp_path)
    with pytest.raises(ConfigError, match=r"different architecture \(model.archi: \[64, 512, 10\] in the checkpoint"):
        prepare(compose_cfg(SMALL + ["model.archi=[64,100,10]", f"resume={run}"]), run)
    # a requeued job lands in its run dir again and resumes from there: the same check applies
    with pytest.raises(ConfigError, match="different architecture"):
        prepare(compose_cfg(SMALL + ["model.activation=tanh"]), run)


def test_worker_processes_and_resume_see_the_same_augmented_images():
    """Random transforms draw per sample from (seed, index): the batches of a resumed epoch, and those
    loaded by worker processes, are the very batches an uninterrupted single-process epoch sees."""
    from torch.utils.data import Dataset

    from eqprop.data import Batches

    class Augmented(Dataset):  # a random crop + flip, as CIFAR-10's augmentation draws them
        def __len__(self):
            return 40

        def __getitem__(self, i):
            x = torch.arange(64, dtype=torch.float32).view(1, 8, 8) + i
            dx, dy = torch.randint(0, 3, (2,)).tolist()
            x = torch.nn.functional.pad(x, (1, 1, 1, 1))[:, dy:dy + 8, dx:dx + 8]
            return (x.flip(2) if torch.rand(1).item() < 0.5 else x), i % 10

    order = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    t0 = time.time()
    whole = [x for _, x, _ in Batches(Augmented(), 8).iterate(order, 0, seed=11)]
    torch.manual_seed(123)  # whatever the global RNG holds at resume time
    tail = [x for _, x, _ in Batches(Augmented(), 8).iterate(order, 2, seed=11)]
    workers = [x for _, x, _ in Batches(Augmented(), 8, num_workers=2).iterate(order, 0, seed=11)]
    other_epoch = [x for _, x, _ in Batches(Augmented(), 8).iterate(order, 0, seed=12)]
    assert all(torch.equal(a, b) for a, b in zip(whole[2:], tail)) and len(tail) == 3
    assert all(torch.equal(a, b) for a, b in zip(whole, workers)) and len(workers) == 5
    assert not all(torch.equal(a, b) for a, b in zip(whole, other_epoch))
    assert time.time() - t0 < 60


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("group", range(4))
def test_the_non_finite_check_names_exactly_the_group_that_holds_one(group, bad):
    """divergence.non_finite (CPU: aminmax per tensor): a single bad value, last in its tensor, in
    one group is found and no other group is named."""
    from types import SimpleNamespace

    from eqprop.divergence import non_finite
    from tests.helpers import small_net
    model = small_net("mlp", archi=[40, 30, 5])
    state = [torch.rand(8, 30, dtype=torch.float64), torch.rand(8, 5, dtype=torch.float64)]
    grads = {p: torch.randn_like(p) for p in model.parameters()}
    loss = torch.tensor(0.25, dtype=torch.float64)
    names = ["the free-phase states", "the gradient estimates", "the weights after the update", "the training loss"]
    target = [state[1], grads[model.synapses[1].weight], model.synapses[0].weight.data, loss][group]
    target.view(-1)[-1] = bad
    est = SimpleNamespace(free=state, grads=grads)
    assert non_finite(est, model, loss) == [names[group]]

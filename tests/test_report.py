"""`python -m eqprop.report` on a real multirun (two estimators x two seeds) plus real failed runs."""
import os
import signal
import statistics
import subprocess
import sys

import pytest
import yaml

from tests.launch_utils import ROOT, TINY, launch_cli, read_metrics

SMALL = [a for a in TINY if not a.startswith("epochs=")] + ["task=digits"]


def report_cli(*args):
    return subprocess.run([sys.executable, "-m", "eqprop.report", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _interrupted_run(run_dir):
    """A run stopped by SIGTERM in its second epoch: fewer epochs than configured."""
    cmd = [sys.executable, str(ROOT / "launch.py")] + SMALL + ["loss=cel", "epochs=50", "task.limit_train=256",
                                                               f"hydra.run.dir={run_dir}"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in p.stdout:
            if "[eqprop] epoch 1/50" in line:
                p.send_signal(signal.SIGTERM)
                break
        p.stdout.read()
        assert p.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        p.kill()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    sweep, others, out = base / "sweep", base / "others", base / "out"
    launch_cli(["-m", "estimator=symmetric,bptt", "seed=0,1", "epochs=2", f"hydra.sweep.dir={sweep}"] + SMALL,
               check=True, timeout=900)
    # three ways to fail, in another group (loss=cel) so the sweep's rows stay as they are
    launch_cli(SMALL + ["epochs=1", "loss=cel", "optimizer.lr=1e38"], run_dir=others / "diverged")
    # a refused config keeps its job dir only in a multirun (a single run's dir is discarded)
    launch_cli(["-m"] + SMALL + ["epochs=1", "loss=cel", "model.archi=[64,10,3]",
                                 f"hydra.sweep.dir={others / 'broken'}"])
    assert (others / "broken" / "0" / ".hydra").is_dir() and not (others / "broken" / "0" / "metrics.jsonl").exists()
    _interrupted_run(others / "interrupted")
    p = report_cli(sweep, others, "--out", out)
    assert p.returncode == 0, p.stderr
    return {"sweep": sweep, "others": others, "out": out, "stdout": p.stdout,
            "md": (out / "report.md").read_text()}


def tables(md: str) -> dict:
    """'## task=..., model=..., loss=...' -> {estimator label: {column: cell}}."""
    out, title, header = {}, None, None
    for line in md.splitlines():
        if line.startswith("## task="):
            title, header = line[3:], None
            out[title] = {}
        elif title and line.startswith("| ") and header is None:
            header = [c.strip() for c in line.strip("|").split("|")]
        elif title and line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[title][cells[0]] = dict(zip(header, cells))
        elif line.startswith("## "):
            title = None
    return out


def jobs_by_estimator(sweep):
    """From Hydra's own overrides.yaml, not from the report's reading of the configs."""
    out = {}
    for job in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir()):
        over = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
                    if "=" in o)
        out.setdefault(over["estimator"], []).append(read_metrics(job))
    return out


def mean_std(values):
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def test_one_row_per_estimator_with_the_runs_numbers(runs):
    t = tables(runs["md"])["task=digits, model=mlp, loss=mse"]
    assert list(t) == ["bptt", "symmetric"]
    for est, histories in jobs_by_estimator(runs["sweep"]).items():
        row = t[est]
        assert len(histories) == 2
        assert row["family"] == ("BPTT" if est == "bptt" else "EP")
        assert row["runs"] == "2" and row["seeds"] == "0, 1" and row["epochs"] == "2" and row["failed"] == "0"
        assert row["best test acc (%)"] == mean_std([max(m["test_acc"] for m in h) for h in histories])
        assert row["final test acc (%)"] == mean_std([h[-1]["test_acc"] for h in histories])
        assert row["time / epoch (s)"] == f"{statistics.fmean(m['seconds'] for h in histories for m in h):.2f}"


def test_failed_runs_are_named_with_the_reason(runs):
    md, others = runs["md"], runs["others"]
    assert "7 runs (4 complete, 3 failed)" in md
    failed = md.split("## Failed runs", 1)[1]
    assert f"`{others / 'diverged'}` (symmetric, seed 0): diverged at epoch 1, batch" in failed
    assert f"`{others / 'broken' / '0'}` (symmetric, seed 0): no metrics.jsonl" in failed
    n_done = len(read_metrics(others / "interrupted"))
    assert f"`{others / 'interrupted'}` (symmetric, seed 0): incomplete: {n_done} of 50 epochs" in failed
    assert "3 failed" in runs["stdout"]
    # the failed runs count in their rows, never in the means
    cel = tables(md)["task=digits, model=mlp, loss=cel"]
    assert len(cel) == 3 and all(r["runs"] == "0" and r["failed"] == "1" for r in cel.values())
    assert all(r["best test acc (%)"] == "–" for r in cel.values())


def test_the_picture_is_written(runs):
    import matplotlib.image

    png = runs["out"] / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h, w = matplotlib.image.imread(png).shape[:2]
    assert w > 300 and h > 200
    assert "![test accuracy against epoch](report.png)" in runs["md"]


def test_default_output_is_the_first_dir_and_bad_input_is_refused(runs, tmp_path):
    p = report_cli(runs["sweep"])
    assert p.returncode == 0, p.stderr
    assert (runs["sweep"] / "report.md").is_file() and (runs["sweep"] / "report.png").is_file()
    assert "(0 failed)" in p.stdout
    p = report_cli(tmp_path / "nope")
    assert p.returncode == 2 and "not a directory" in p.stderr
    p = report_cli(tmp_path)
    assert p.returncode == 2 and "no training runs under" in p.stderr


def test_a_run_dir_cannot_make_the_report_read_the_environment(tmp_path):
    """A run dir is data anyone may have written: only references between its own keys are resolved,
    `${oc.env:...}` (or any resolver) is printed as written, never evaluated."""
    run = tmp_path / "crafted"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "mode: train\nepochs: 1\nseed: 0\n"
        "task: {name: '${oc.env:SECRET_X,none}'}\nmodel: {name: mlp}\n"
        "loss: {name: '${names.loss}'}\nnames: {loss: mse}\nestimator: {name: symmetric}\n"
        "dynamics: {T1: '${oc.env:SECRET_X,none}', T2: '${dynamics.T1}'}\n")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "status": "ok", "test_acc": 0.5, "train_acc": 0.5, '
                                       '"seconds": 1.0}\n')
    secret = "s3cr3t-value-of-the-reader"
    p = subprocess.run([sys.executable, "-m", "eqprop.report", str(run), "--out", str(tmp_path / "out")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, SECRET_X=secret))
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "out" / "report.md").read_text()
    assert "task=${oc.env:SECRET_X,none}" in md and "loss=mse" in md  # read, and the key reference resolved
    assert secret not in md + p.stdout + p.stderr

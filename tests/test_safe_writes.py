"""Run files are written without following links someone could plant at their names: the W&B
logger's files through fresh mkstemp names, the append-only logs refuse a link (real launch.py runs)."""
import os

import pytest

from eqprop.checkpoint import CheckpointError, append_line, write_text_atomic
from eqprop.sweep_summary import write_summary
from tests.launch_utils import TINY, launch_cli

SMALL = [a for a in TINY if not a.startswith("epochs=")] + ["task=digits", "epochs=1"]
VICTIM = "someone else's file\n"


def victim(tmp_path, name="victim"):
    f = tmp_path / name
    f.write_text(VICTIM)
    return f


def test_write_text_atomic_replaces_a_link_at_its_name_not_its_target(tmp_path):
    target = victim(tmp_path)
    (tmp_path / "out.json").symlink_to(target)
    write_text_atomic(tmp_path / "out.json", "{}\n")
    assert target.read_text() == VICTIM
    assert not (tmp_path / "out.json").is_symlink() and (tmp_path / "out.json").read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "victim"]  # no temp file left


def test_append_line_refuses_a_link(tmp_path):
    target = victim(tmp_path)
    (tmp_path / "metrics.jsonl").symlink_to(target)
    with pytest.raises(CheckpointError, match="symbolic link"):
        append_line(tmp_path / "metrics.jsonl", '{"epoch": 1}')
    assert target.read_text() == VICTIM
    append_line(tmp_path / "own.jsonl", "a")
    append_line(tmp_path / "own.jsonl", "b")
    assert (tmp_path / "own.jsonl").read_text() == "a\nb\n"


def test_the_sweep_summary_lock_is_not_followed(tmp_path):
    target = victim(tmp_path / "..", f"{tmp_path.name}-victim")
    (tmp_path / ".summary.lock").symlink_to(target)
    with pytest.raises(OSError):
        write_summary(tmp_path)
    assert target.read_text() == VICTIM


def test_the_wandb_logger_never_writes_through_a_fixed_temp_name(tmp_path, monkeypatch):
    """The names the logger used to write first (wandb_run_id.tmp, wandb_step.tmp), planted as links."""
    for k in list(os.environ):
        if k.startswith("WANDB_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    targets = {name: victim(tmp_path, f"victim-{name}") for name in ("wandb_run_id.tmp", "wandb_step.tmp")}
    for name, target in targets.items():
        (run / name).symlink_to(target)
    launch_cli(SMALL + ["logger=wandb", "logger.mode=offline"], run_dir=run, check=True)
    assert all(t.read_text() == VICTIM for t in targets.values())
    assert len((run / "wandb_run_id").read_text().strip()) == 8 and int((run / "wandb_step").read_text()) == 0
    assert not (run / "wandb_run_id").is_symlink() and not (run / "wandb_step").is_symlink()


def test_a_run_refuses_to_append_its_metrics_through_a_link(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    target = victim(tmp_path)
    (run / "metrics.jsonl").symlink_to(target)
    p = launch_cli(SMALL, run_dir=run)
    assert p.returncode != 0
    assert "metrics.jsonl is a symbolic link" in p.stdout + p.stderr
    assert target.read_text() == VICTIM

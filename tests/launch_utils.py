"""Run the real app: in-process through Hydra's compose API, or launch.py in a subprocess."""
import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import launch  # noqa: E402,F401  (registers the resolvers the configs use)

# a few iterations on a small slice of the data: enough to exercise every code path
TINY = ["epochs=1", "task.limit_train=64", "task.limit_test=50", "task.batch_size=32",
        "dynamics.T1=6", "dynamics.T2=3", "device=cpu"]


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def run_inprocess(overrides, run_dir: Path):
    from eqprop.app import prepare, run_mode

    d = compose_cfg(overrides)
    cfg, device, weights = prepare(d, run_dir)
    return run_mode(cfg, device, weights, run_dir, d)


def launch_cli(args, run_dir=None, timeout=600, env=None, check=False):
    cmd = [sys.executable, str(ROOT / "launch.py")] + list(args)
    if run_dir is not None:
        cmd.append(f"hydra.run.dir={run_dir}")
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"launch.py failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def read_metrics(run_dir: Path):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]

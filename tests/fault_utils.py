"""Real launch.py processes to interrupt, kill and resume, and fake on-disk data sets to feed them."""
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.launch_utils import ROOT


# The runs here are tiny: one thread each keeps them fast when the machine is busy (several torch
# threads contending for two shared cores spend most of their time waiting on each other).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Job:
    """launch.py in the background, its stdout/stderr in files (a pipe nobody reads could block it),
    in its own session so that a signal can go to the whole process group, as Ctrl-C does."""

    def __init__(self, args, out_dir: Path, run_dir=None, env=None):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = out_dir / "stdout.txt", out_dir / "stderr.txt"
        cmd = [sys.executable, str(ROOT / "launch.py")] + list(args)
        if run_dir is not None:
            cmd.append(f"hydra.run.dir={run_dir}")
        e = dict(os.environ, PYTHONUNBUFFERED="1", **ONE_THREAD, **(env or {}))
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, env=e, start_new_session=True)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_until(self, ready, timeout=300.0, poll=0.005):
        t0 = time.monotonic()
        while not ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"launch.py ended ({self.proc.returncode}) before it was ready:\n"
                                     f"{self.stdout[-2000:]}\n{self.stderr[-2000:]}")
            if time.monotonic() - t0 > timeout:
                self.kill()
                raise AssertionError(f"launch.py not ready after {timeout} s:\n{self.stdout[-2000:]}")
            time.sleep(poll)

    def signal(self, signum, group=False):
        if group:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)

    def wait(self, timeout=300.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def write_fake_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """MNIST's raw idx files (what torchvision reads) with random digits: task=mnist without a download."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28)
                                                          + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.numpy().tobytes())
    return root


def same_weights(a: Path, b: Path) -> bool:
    wa = torch.load(a, weights_only=True)["model"]
    wb = torch.load(b, weights_only=True)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

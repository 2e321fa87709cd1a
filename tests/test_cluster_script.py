"""scripts/slurm/cluster.sh runs root daemons from its state dir, whose default name anyone can
guess: a dir someone else could have made or changed is refused before anything reads it."""
import os
import subprocess

import pytest

from tests.launch_utils import ROOT

SCRIPT = str(ROOT / "scripts/slurm/cluster.sh")


def cluster(cmd, state_dir):
    return subprocess.run([SCRIPT, cmd], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, EQPROP_SLURM_DIR=str(state_dir)))


@pytest.mark.parametrize("case,reason", [
    ("another user's", "belongs to uid 4242, not root"),
    ("group-writable", "writable by group or others (mode 775)"),
    ("symlink", "is a symbolic link"),
    ("in a dir others can write", "others could replace"),
])
def test_a_state_dir_others_control_is_refused(tmp_path, case, reason):
    if os.geteuid() != 0:
        pytest.skip("needs root (os.chown to another uid)")
    tmp_path.chmod(0o755)
    state = tmp_path / "state"
    if case == "symlink":
        (tmp_path / "real").mkdir()
        state.symlink_to(tmp_path / "real")
    elif case == "in a dir others can write":
        tmp_path.chmod(0o777)
        state.mkdir()
    else:
        state.mkdir(mode=0o755)
        if case == "group-writable":
            state.chmod(0o775)
        else:
            os.chown(state, 4242, 4242)
    (state / "etc").mkdir(exist_ok=True)
    for cmd in ("status", "stop", "start"):
        p = cluster(cmd, state)
        assert p.returncode == 1 and "refusing the state directory" in p.stderr and reason in p.stderr, p.stderr
    assert os.listdir(state) == ["etc"]  # nothing written there


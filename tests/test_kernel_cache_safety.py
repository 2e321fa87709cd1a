"""The kernel cache on a shared machine: a library that someone else could have written is never
loaded (its constructor would leave a marker file), the job still relaxes with a private build,
and the cache dir is created 0700. Real processes: each scenario loads the kernel in a new Python."""
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from eqprop.kernels import build
from tests.launch_utils import ROOT

OTHER_UID = 4242  # a second user: as root, os.chown makes its files

PLANTED_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("planted library ran\n", f); fclose(f); }
}
/* the kernel's entry points, doing nothing: a run that loads this trains to chance, silently */
double eqprop_dense_relax_f32(void *plan) { return 0.0; }
double eqprop_dense_relax_f64(void *plan) { return 0.0; }
"""

# loads the kernel, relaxes one small net natively and with torch ops, prints what happened
CHILD = r"""
import json, torch
from eqprop.dynamics import Dynamics, relax
from eqprop.kernels import build
from eqprop.kernels.dense import NativeDense
from eqprop.models.fast import FastStepper
from tests.helpers import random_batch, random_state, small_net
model = small_net("mlp")
x, y = random_batch(model, n=6)
state = random_state(model, n=6)
with torch.no_grad():
    native = NativeDense.build(FastStepper(model, model.input_drive(x), state)) is not None
    a = relax(model, x, state, 9, 0.5, y)
    b = relax(model, x, state, 9, 0.5, y, dyn=Dynamics(native=False))
print(json.dumps({"native": native, "origin": build.origin(), "error": build.error(),
                  "equal": all(torch.allclose(u, v, rtol=0, atol=1e-10) for u, v in zip(a.state, b.state))}))
"""

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")


def predicted_name(cache, monkeypatch) -> str:
    monkeypatch.setenv("EQPROP_KERNEL_CACHE", str(cache))
    return build.library_path(build._compiler()[1]).name


def plant(path, marker) -> None:
    src = path.parent / "planted.c"
    src.write_text(PLANTED_C)
    subprocess.run(["cc", "-shared", "-fPIC", f'-DMARKER="{marker}"', str(src), "-o", str(path)], check=True)
    src.unlink()


def run_child(cache, umask=0o022) -> dict:
    env = dict(os.environ, EQPROP_KERNEL_CACHE=str(cache), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300, umask=umask)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["stderr"] = p.stderr
    return out


def assert_relaxed_by_a_real_build(got):
    assert got["error"] is None and got["native"], got
    assert got["equal"], "the native relaxation differs from the torch one: not eqprop's kernel"


def test_the_cache_dir_is_created_private_and_reused(tmp_path, monkeypatch):
    cache = tmp_path / "home" / "cache" / "kernels"
    name = predicted_name(cache, monkeypatch)
    got = run_child(cache, umask=0o002)  # a umask that would make the dir and the library group-writable
    assert_relaxed_by_a_real_build(got)
    assert got["origin"] == str(cache / name)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    lib = (cache / name).lstat()
    assert stat.S_ISREG(lib.st_mode) and lib.st_mode & 0o022 == 0 and lib.st_uid == os.geteuid()
    assert sorted(os.listdir(cache)) == [name]  # no build dir left behind
    again = run_child(cache, umask=0o002)  # the second job loads the cached build, it does not rebuild
    assert_relaxed_by_a_real_build(again)
    assert (cache / name).stat().st_ino == lib.st_ino and (cache / name).stat().st_mtime_ns == lib.st_mtime_ns


def test_an_own_private_library_at_the_name_is_loaded(tmp_path, monkeypatch):
    """The control for the tests below: a private file at the predicted name is what the cache
    loads, so the marker does appear when such a library is trusted."""
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    cache.mkdir(mode=0o700)
    name = predicted_name(cache, monkeypatch)
    plant(cache / name, marker)
    (cache / name).chmod(0o700)
    got = run_child(cache)
    assert marker.exists()
    assert got["native"] and not got["equal"]


@pytest.mark.parametrize("case", ["other owner", "group-writable", "world-writable", "symlink"])
def test_a_planted_library_in_the_own_cache_is_never_loaded_and_is_replaced(tmp_path, monkeypatch, case):
    cache, marker, elsewhere = tmp_path / "cache", tmp_path / "marker", tmp_path / "elsewhere"
    cache.mkdir(mode=0o700)
    elsewhere.mkdir()
    name = predicted_name(cache, monkeypatch)
    if case == "symlink":  # a private library of this user's, reached through a link
        plant(elsewhere / "lib.so", marker)
        (elsewhere / "lib.so").chmod(0o700)
        (cache / name).symlink_to(elsewhere / "lib.so")
    else:
        plant(cache / name, marker)
        (cache / name).chmod({"other owner": 0o755, "group-writable": 0o775, "world-writable": 0o757}[case])
        if case == "other owner":
            os.chown(cache / name, OTHER_UID, OTHER_UID)
    got = run_child(cache)
    assert not marker.exists(), "the planted library was loaded"
    assert_relaxed_by_a_real_build(got)
    assert "not loading cached kernel" in got["stderr"]
    lib = (cache / name).lstat()  # replaced by this user's own build
    assert stat.S_ISREG(lib.st_mode) and lib.st_uid == os.geteuid() and lib.st_mode & 0o022 == 0
    if case == "symlink":
        assert (elsewhere / "lib.so").is_file() and not marker.exists()  # the link's target is untouched


@pytest.mark.parametrize("case", ["shared sticky dir of another user", "group-writable dir", "symlinked dir"])
def test_a_cache_dir_others_can_write_is_not_used(tmp_path, monkeypatch, case):
    shared, marker = tmp_path / "shared", tmp_path / "marker"
    shared.mkdir()
    cache = shared if case != "symlinked dir" else tmp_path / "link"
    name = predicted_name(cache, monkeypatch)
    plant(shared / name, marker)
    if case == "shared sticky dir of another user":
        os.chown(shared / name, OTHER_UID, OTHER_UID)
        os.chown(shared, OTHER_UID, OTHER_UID)
        shared.chmod(0o1777)
    elif case == "group-writable dir":
        (shared / name).chmod(0o700)  # even this user's own file: a group member could have swapped it
        shared.chmod(0o770)
    else:
        (shared / name).chmod(0o700)
        shared.chmod(0o700)
        cache.symlink_to(shared)
    before = {p: (shared / p).read_bytes() for p in os.listdir(shared)}
    got = run_child(cache)
    assert not marker.exists(), "the planted library was loaded"
    assert_relaxed_by_a_real_build(got)
    assert got["origin"].startswith("a private build")
    assert "not using the kernel cache" in got["stderr"]
    assert {p: (shared / p).read_bytes() for p in os.listdir(shared)} == before  # nothing written there

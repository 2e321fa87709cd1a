"""The compiled dense relaxation kernel (eqprop/kernels): built here, used for dense nets on CPU,
equal to the torch path, and replaced by the torch path with a clear warning when it cannot be built."""
import os
import shutil

import pytest
import torch

from eqprop.dynamics import Dynamics, relax
from eqprop.kernels import build
from eqprop.kernels.dense import NativeDense
from eqprop.models.fast import FastStepper
from tests.helpers import random_batch, random_state, small_net


def stepper_for(model, n=5, dtype=torch.float64):
    model = model.to(dtype)
    x, _ = random_batch(model, n=n)
    with torch.no_grad():
        return FastStepper(model, model.input_drive(x.to(dtype)), [s.to(dtype) for s in random_state(model, n=n)])


def test_the_kernel_builds_on_this_machine():
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler on this machine: eqprop relaxes with torch ops (warned at first use)")
    assert build.load() is not None, build.error()


@pytest.mark.parametrize("name,kw,applies", [
    ("mlp", {}, True),
    ("mlp", {"archi": [12, 9, 40, 5]}, True),
    ("vf_mlp", {"archi": [12, 9, 8, 5]}, True),
    ("mlp", {"archi": [12, 5]}, False),  # one state layer: nothing to iterate between layers
    ("cnn", {"pools": "mm"}, False),
])
def test_the_kernel_takes_dense_nets_on_cpu_only(name, kw, applies):
    if build.load() is None:
        pytest.skip(f"kernel unavailable: {build.error()}")
    for dtype in (torch.float64, torch.float32):
        got = NativeDense.build(stepper_for(small_net(name, **kw), dtype=dtype))
        assert (got is not None) == applies
    model = small_net("mlp").to(torch.float16)
    assert NativeDense.build(stepper_for(model, dtype=torch.float16)) is None


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("loss,readout", [("mse", False), ("cel", True), ("cel", False)])
@pytest.mark.parametrize("activation", ["my_hard_sig", "my_sigmoid", "tanh"])
def test_many_blocks_and_threads_equal_the_torch_path(threads, dtype, atol, loss, readout, activation):
    """37 examples: several blocks of 8 and a remainder, split over 1-3 threads; the vectorised
    activations (libmvec exp) and their scalar tails."""
    model = small_net("mlp", loss, readout, archi=[30, 64, 33, 10], activation=activation).to(dtype)
    x, y = random_batch(model, n=37)
    x = x.to(dtype)
    state = [s.to(dtype) for s in random_state(model, n=37)]
    beta = torch.linspace(-0.8, 0.8, 37, dtype=dtype)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for update in ("sync", "async"):
                a, b = (relax(model, x, state, 25, beta, y,
                              dyn=Dynamics(update=update, native=native, tol=1e-12, check_every=4))
                        for native in (True, False))
                assert a.steps == b.steps
                assert abs(a.residual - b.residual) <= atol
                for u, v in zip(a.state, b.state):
                    assert torch.allclose(u, v, rtol=0, atol=atol), (u - v).abs().max()
    finally:
        torch.set_num_threads(old)


def test_no_compiler_falls_back_to_torch_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("EQPROP_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_lib", None)
    monkeypatch.setattr(build, "_error", None)
    model = small_net("mlp")
    x, y = random_batch(model, n=6)
    state = random_state(model, n=6)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="no C compiler found"):
        got = relax(model, x, state, 7, 0.5, y)
    with torch.no_grad():
        want = relax(model, x, state, 7, 0.5, y, dyn=Dynamics(native=False))
    assert all(torch.equal(u, v) for u, v in zip(got.state, want.state))
    assert "set dynamics.native=false" in build.error()
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_a_failed_build_says_why_and_leaves_no_library(monkeypatch, tmp_path):
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake-cc 1.0; exit 0; fi\n"
                    "echo 'fatal: out of cheese' >&2; exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("EQPROP_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_lib", None)
    monkeypatch.setattr(build, "_error", None)
    with pytest.warns(RuntimeWarning, match="out of cheese"):
        assert build.load() is None
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary file is gone, nothing half-written


def test_the_library_name_follows_the_cpu(monkeypatch):
    """A home directory shared by nodes of different CPUs keeps one -march=native build per kind."""
    a = build.library_path("gcc 12")
    monkeypatch.setattr(build, "_cpu_flags", lambda: "flags: fpu sse sse2")
    assert build.library_path("gcc 12") != a
    assert build.library_path("gcc 13") != build.library_path("gcc 12")

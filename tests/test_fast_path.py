"""The fast relaxation path (in place, preallocated, cached pool indices, batched nudges) computes
what the step-by-step `model.step` path computes, in float64 to 1e-10; and the closed-form EP update
equals autograd of Phi."""
import pytest
import torch

from eqprop.activations import ACTIVATIONS
from eqprop.dynamics import Dynamics, GraphedRelax, relax, relax_stepwise
from eqprop.estimators import OneSided, Symmetric
from eqprop.models.fast import FastStepper, inplace_activation
from tests.helpers import random_batch, random_state, small_net

CASES = [
    ("mlp", "mse", False, {}),
    ("mlp", "cel", False, {}),
    ("mlp", "cel", True, {}),
    ("mlp", "mse", False, {"archi": [12, 5]}),  # a single neuron layer
    ("vf_mlp", "mse", False, {}),
    ("vf_mlp", "cel", True, {}),
    ("cnn", "mse", False, {"pools": "mm"}),
    ("cnn", "mse", False, {"pools": "aa"}),
    ("cnn", "mse", False, {"pools": "ii"}),
    ("cnn", "cel", True, {"pools": "ma", "fc": [6, 5]}),
    ("cnn", "cel", False, {"pools": "mi", "strides": [2, 1], "paddings": [1, 1]}),
    ("cnn", "mse", False, {"channels": [3, 4, 4], "kernels": [3, 3, 3], "strides": [1, 1, 1],
                           "paddings": [1, 1, 1], "pools": "mmi", "fc": [6, 5], "in_size": 12}),
    ("vf_cnn", "mse", False, {"pools": "mm"}),
    ("vf_cnn", "cel", True, {"pools": "am"}),
    # appended (tests index the cases above): dense layers with scaled weight copies
    ("mlp", "cel", True, {"archi": [12, 9, 40, 5]}),  # a middle dense layer; a wide (batch-major) top
    ("vf_mlp", "mse", False, {"archi": [12, 9, 8, 5]}),
    ("mlp", "mse", False, {"activation": "my_sigmoid"}),  # scale 4 folded into the weights
    ("mlp", "mse", False, {"activation": "tanh"}),
]
IDS = [f"{c[0]}-{c[1]}{'-readout' if c[2] else ''}-{i}" for i, c in enumerate(CASES)]
ATOL = 1e-10


def close(a, b, atol=ATOL):
    return all(u.shape == v.shape and torch.allclose(u, v, rtol=0, atol=atol) for u, v in zip(a, b))


def maxdiff(a, b):
    return max((u - v).abs().max().item() for u, v in zip(a, b))


def setup(case, n=5):
    name, loss, readout, kw = case
    model = small_net(name, loss, readout, **kw)
    x, y = random_batch(model, n=n)
    state = random_state(model, n=n)
    return model, x, y, state


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("update", ["sync", "async"])
@pytest.mark.parametrize("beta", [0.0, 0.7, -0.4])
def test_fast_relax_equals_stepwise(case, update, beta, native):
    model, x, y, state = setup(case)
    before = [s.clone() for s in state]
    with torch.no_grad():
        fast = relax(model, x, state, 9, beta, y, dyn=Dynamics(update=update, native=native))
        slow = relax_stepwise(model, x, state, 9, beta, y, dyn=Dynamics(update=update))
    assert fast.steps == slow.steps == 9
    assert close(fast.state, slow.state), maxdiff(fast.state, slow.state)
    assert close(state, before, atol=0), "relax must not write into the state it was given"


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("update", ["sync", "async"])
def test_batched_plus_minus_beta_equals_separate(case, update, native):
    model, x, y, state = setup(case)
    m, b = x.shape[0], 0.6
    with torch.no_grad():
        drive0 = model.input_drive(x)
        both = relax(model, None, [torch.cat([s, s]) for s in state], 8,
                     torch.cat([torch.full((m,), b, dtype=torch.float64), torch.full((m,), -b, dtype=torch.float64)]), torch.cat([y, y]),
                     drive0=torch.cat([drive0, drive0]), dyn=Dynamics(update=update, native=native))
        plus = relax_stepwise(model, x, state, 8, b, y, dyn=Dynamics(update=update))
        minus = relax_stepwise(model, x, state, 8, -b, y, dyn=Dynamics(update=update))
    assert close([s[:m] for s in both.state], plus.state)
    assert close([s[m:] for s in both.state], minus.state)


@pytest.mark.parametrize("case,native", [(CASES[0], True), (CASES[0], False), (CASES[6], True), (CASES[12], True)],
                         ids=["mlp-native", "mlp-torch", "cnn", "vf_cnn"])
@pytest.mark.parametrize("update", ["sync", "async"])
def test_tolerance_stops_where_stepwise_does(case, update, native):
    model, x, y, state = setup(case)
    with torch.no_grad():
        each, every_3 = (Dynamics(update=update, tol=1e-6, check_every=c, native=native) for c in (1, 3))
        fast = relax(model, x, state, 200, 0.3, y, dyn=each)
        slow = relax_stepwise(model, x, state, 200, 0.3, y, dyn=Dynamics(update=update, tol=1e-6))
        capped = relax(model, x, state, fast.steps - 1, 0.3, y, dyn=each)
        every3 = relax(model, x, state, 200, 0.3, y, dyn=every_3)
        slow3 = relax_stepwise(model, x, state, 200, 0.3, y, dyn=Dynamics(update=update, tol=1e-6, check_every=3))
    assert every3.steps == slow3.steps and every3.steps % 3 == 0 and fast.steps <= every3.steps < fast.steps + 3
    assert fast.steps == slow.steps < 200
    assert fast.residual < 1e-6 and abs(fast.residual - slow.residual) < 1e-12
    assert close(fast.state, slow.state)
    assert capped.steps == fast.steps - 1 and capped.residual >= 1e-6


def test_check_every_checks_on_multiples_only():
    model, x, y, state = setup(CASES[6])
    with torch.no_grad():
        every = relax(model, x, state, 200, 0.0, y, dyn=Dynamics(tol=1e-6, check_every=7))
        each = relax(model, x, state, 200, 0.0, y, dyn=Dynamics(tol=1e-6, check_every=1))
    assert every.steps % 7 == 0 and each.steps <= every.steps < each.steps + 7


def test_fast_step_partial_layers_matches_model_step():
    model, x, y, state = setup(CASES[6])
    drive0 = model.input_drive(x)
    with torch.no_grad():
        st = FastStepper(model, drive0, state, 0.5, y)
        for layers in ([1], [0, 2], None, [2], [0]):
            want = model.step(drive0, [s.clone() for s in st.state], 0.5, y, layers=layers)
            st.step(layers)
            assert close(st.state, want)


def test_channels_last_buffers_give_the_same_states():
    model, x, y, state = setup(CASES[11])
    with torch.no_grad():
        drive0 = model.input_drive(x)
        st = FastStepper(model, drive0, state, 0.5, y, memory_format=torch.channels_last)
        for _ in range(6):
            st.step()
        want = relax_stepwise(model, x, state, 6, 0.5, y).state
    assert st.state[0].is_contiguous(memory_format=torch.channels_last)
    assert close(st.state, want)


def test_static_stepper_rescales_dense_weights_on_every_load():
    """Dense layers run on copies of the weights scaled by the activation's scale; a static
    stepper (CUDA graph replay) must refresh them from in-place optimiser updates at each load."""
    model, x, y, state = setup(CASES[14])
    with torch.no_grad():
        drive0 = model.input_drive(x)
        st = FastStepper(model, drive0, state, 0.5, y, static=True)
        for p in model.parameters():
            p.mul_(1.5).add_(0.1)
        drive0 = model.input_drive(x)
        st.load(drive0, state, 0.5, y)
        for _ in range(3):
            st.step()
        want = relax_stepwise(model, x, state, 3, 0.5, y).state
    assert all(p is not None for p in st.dense.slots)
    assert close(st.state, want), maxdiff(st.state, want)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_inplace_activation(name):
    fn = ACTIVATIONS[name]
    x = torch.linspace(-3, 3, 1001, dtype=torch.float64)
    assert torch.allclose(inplace_activation(fn)(x.clone()), fn(x), rtol=0, atol=1e-15)
    other = lambda t: t * 2  # noqa: E731  (no in-place form known: falls back to a copy)
    assert torch.equal(inplace_activation(other)(x.clone()), x * 2)


@pytest.mark.parametrize("case", [c for c in CASES if not c[0].startswith("vf")],
                         ids=[i for c, i in zip(CASES, IDS) if not c[0].startswith("vf")])
def test_closed_form_ep_grads_equal_autograd_of_phi(case):
    model, x, y, s_a = setup(case)
    s_b = random_state(model, n=x.shape[0], seed=7)
    for a, b, denom in [((s_a, 0.7), (s_b, -0.7), 1.4), ((s_a, 0.3), (s_b, 0.0), 0.3)]:
        got = model.ep_grads(x, y, a, b, denom)
        want = model.ep_grads_autograd(x, y, a, b, denom)
        assert list(got) == list(want)
        for p in want:
            assert got[p].shape == p.shape
            assert torch.allclose(got[p], want[p], rtol=0, atol=ATOL), (got[p] - want[p]).abs().max()


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[9], CASES[12]],
                         ids=["mlp", "mlp_readout", "cnn_readout", "vf_cnn"])
@pytest.mark.parametrize("update", ["sync", "async"])
def test_symmetric_estimate_batched_equals_separate(case, update):
    model, x, y, _ = setup(case)
    gen = torch.Generator().manual_seed(0)
    est = Symmetric(0.5)
    runs = [est(model, x, y, Dynamics(12, 5, update, batch_nudged=flag), gen) for flag in (True, False)]
    for p in model.parameters():
        assert torch.allclose(runs[0].grads[p], runs[1].grads[p], rtol=0, atol=ATOL)
    assert runs[0].steps == runs[1].steps == {"free": 12, "nudged": 5, "nudged_neg": 5}


def test_estimators_on_fast_path_equal_stepwise_definition():
    """Symmetric EP end to end (fast relax, batched nudges, closed-form update) against the
    definitional pieces (model.step relaxations, autograd of Phi)."""
    model, x, y, _ = setup(CASES[9])
    b, dyn = 0.4, Dynamics(15, 6)
    got = Symmetric(b)(model, x, y, dyn, torch.Generator())
    drive0 = model.input_drive(x).detach()
    with torch.no_grad():
        free = relax_stepwise(model, x, model.init_state(x.shape[0]), 15, drive0=drive0).state
        plus = relax_stepwise(model, x, free, 6, b, y, drive0=drive0).state
        minus = relax_stepwise(model, x, free, 6, -b, y, drive0=drive0).state
    want = model.ep_grads_autograd(x, y, (plus, b), (minus, -b), 2 * b)
    assert close(got.free, free)
    for p in model.parameters():
        assert torch.allclose(got.grads[p], want[p], rtol=0, atol=ATOL)
    one = OneSided(b)(model, x, y, dyn, torch.Generator())
    want = model.ep_grads_autograd(x, y, (plus, b), (free, 0.0), b)
    for p in model.parameters():
        assert torch.allclose(one.grads[p], want[p], rtol=0, atol=ATOL)


def test_bad_options_are_refused_clearly():
    model, x, y, state = setup(CASES[0])
    with pytest.raises(ValueError, match="dynamics.update"):
        relax(model, x, state, 3, dyn=Dynamics(update="gauss-seidel"))
    with pytest.raises(ValueError, match="dynamics.tol"):
        relax(model, x, state, 3, dyn=Dynamics(tol=-1.0))
    with pytest.raises(ValueError, match="check_every"):
        relax(model, x, state, 3, dyn=Dynamics(tol=1e-3, check_every=0))



def test_stepwise_takes_a_per_example_beta_as_the_fast_path():
    """Issue 15: the stepwise path (complex states of holomorphic EP) runs a per-example beta too, and
    computes what the fast path computes with it."""
    model, x, y, state = setup(CASES[0])
    beta = torch.linspace(-0.5, 0.5, x.shape[0], dtype=x.dtype)
    slow = relax(model, x, state, 5, beta, y, fast=False).state
    fast = relax(model, x, state, 5, beta, y).state
    for a, b in zip(slow, fast):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    one = relax(model, x[:1], [s[:1] for s in state], 5, beta[0].item(), y[:1], fast=False).state
    for a, b in zip(one, slow):
        torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-14)


class EmulatedGraph(GraphedRelax):
    """GraphedRelax with the CUDA graph emulated on the CPU: a capture freezes which buffers each
    kernel reads and writes and which pool indices it recomputes, and a replay runs exactly that,
    whatever Python's bookkeeping says at replay time. The emulation restores the bookkeeping seen
    at capture, runs the two steps, and checks that they leave the buffers where they found them
    (what makes replaying one captured pair of steps again and again correct)."""
    _cache: dict = {}

    def _warmup(self):
        self._steps(2)

    def _capture(self):
        st = self.stepper
        snap = (list(st.cur), list(st.nxt), set(st.valid))

        def replay():
            saved = (list(st.cur), list(st.nxt), set(st.valid))
            st.cur[:], st.nxt[:] = snap[0], snap[1]
            st.valid.clear()
            st.valid.update(snap[2])
            self._steps(2)
            assert all(a is b for a, b in zip(st.cur + st.nxt, snap[0] + snap[1]))
            assert st.valid == snap[2]
            st.cur[:], st.nxt[:] = saved[0], saved[1]
            st.valid.clear()
            st.valid.update(saved[2])
        return replay


@pytest.mark.parametrize("case", [CASES[6], CASES[11], CASES[12], CASES[2]], ids=["cnn", "cnn3", "vf_cnn", "mlp"])
@pytest.mark.parametrize("update", ["sync", "async"])
def test_graph_replay_logic_reuses_buffers_correctly(case, update):
    """Several batches through one cached graph object: odd and even T, free and nudged (per-example
    beta), an early stop by tol; each equals the step-by-step relaxation."""
    EmulatedGraph._cache.clear()
    model, x, y, _ = setup(case)
    m = x.shape[0]
    with torch.no_grad():
        drive0 = model.input_drive(x)
        for i, (T, signs, tol) in enumerate([(9, None, 0.0), (8, None, 0.0), (11, None, 0.0), (7, None, 1e-3),
                                             (9, (1, -1), 0.0), (10, (-1, 1), 0.0)]):
            state = random_state(model, n=m, seed=10 + i)
            if signs is None:
                beta, beta_t = 0.0, 0.0
            else:
                beta_t = torch.tensor([0.5 * signs[j % 2] for j in range(m)], dtype=torch.float64)
            obj = EmulatedGraph.get(model, drive0, state, beta_t, update)
            got = obj.run(drive0, state, beta_t, y, T, tol, 1)
            if signs is None:
                want = relax_stepwise(model, x, state, T, 0.0, y, dyn=Dynamics(update=update, tol=tol))
                assert got.steps == want.steps or (tol > 0 and got.steps >= want.steps)
                want = relax_stepwise(model, x, state, got.steps, 0.0, y, dyn=Dynamics(update=update))
                assert close(got.state, want.state), (i, maxdiff(got.state, want.state))
            else:
                for j in range(m):
                    b = float(beta_t[j])
                    want = relax_stepwise(model, x, [s[j:j + 1] for s in state], T, b, y[j:j + 1],
                                          drive0=drive0[j:j + 1], dyn=Dynamics(update=update))
                    assert close([s[j:j + 1] for s in got.state], want.state), (i, j)
    assert len(EmulatedGraph._cache) == 2  # one free graph, one nudged graph, reused across batches


@pytest.mark.parametrize("kernels", [("conv", "convT", False), ("conv", "data", True), ("gemm", "gemm", False),
                                     ("gemm", "convT", True)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("case", [CASES[10], CASES[11], CASES[13]], ids=["cnn-stride2", "cnn3", "vf_cnn"])
def test_every_conv_kernel_and_layout_gives_the_same_steps(case, kernels, layout, monkeypatch):
    """The kernels chosen per device (CPU: oneDNN backward-data, GEMM for tiny maps; GPU: cuDNN)
    are all checked here, whatever this machine would pick."""
    import eqprop.models.fast as fast
    from eqprop.models.synapses import ConvKernels

    chosen = fast.choose_kernels
    monkeypatch.setattr(fast, "choose_kernels", lambda *a, **kw: chosen(*a, **kw).forcing(ConvKernels(*kernels)))
    model, x, y, state = setup(case)
    with torch.no_grad():
        drive0 = model.input_drive(x)
        for update in ("sync", "async"):
            st = FastStepper(model, drive0, state, 0.6, y, memory_format=layout)
            n = model.n_layers
            for layers in (list(range(0, n, 2)), list(range(1, n, 2))) * 3 if update == "async" else [None] * 3:
                st.step(layers)
            want = relax_stepwise(model, x, state, 3, 0.6, y, dyn=Dynamics(update=update)).state
            assert close(st.state, want), (update, maxdiff(st.state, want))


def test_default_check_every_follows_the_cost_of_a_step():
    """Auto cadence: every 5 steps for dense nets on CPU (a check costs ~1/4 of their step),
    every step for conv nets on CPU, every 10 on CUDA (a check syncs the queue)."""
    from eqprop.dynamics import default_check_every
    mlp, cnn = setup(CASES[0])[0], setup(CASES[6])[0]
    assert default_check_every("cpu", mlp) == 5 and default_check_every("cpu", cnn) == 1
    assert default_check_every("cuda", mlp) == default_check_every("cuda", cnn) == 10
    model, x, y, state = setup(CASES[0])
    with torch.no_grad():
        auto = relax(model, x, state, 200, 0.3, y, dyn=Dynamics(tol=1e-6))
    assert auto.steps % 5 == 0

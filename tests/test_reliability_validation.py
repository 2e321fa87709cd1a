"""Bad input is refused before any compute, with a message naming the key, the bad value and what
is expected. Most cases go through Hydra's composition and eqprop.config in-process (the same code
launch.py runs); a representative set runs the real launch.py: exit code 2 (1 for what Hydra itself
refuses), the message on stderr, no traceback and no run left behind."""
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from eqprop.config import ConfigError, RunConfig, from_dict
from eqprop.config_errors import explain
from tests.fault_utils import ONE_THREAD, write_fake_mnist
from tests.launch_utils import ROOT, launch_cli

# (overrides, fragments the message must contain)
BAD = {
    "T1 zero": (["dynamics.T1=0"], ["dynamics.T1=0", "must be a positive integer"]),
    "T2 negative": (["dynamics.T2=-3"], ["dynamics.T2=-3", "must be a positive integer"]),
    "T2 zero": (["dynamics.T2=0"], ["dynamics.T2=0", "must be a positive integer"]),
    "check_every zero": (["dynamics.tol=1e-4", "dynamics.check_every=0"],
                         ["dynamics.check_every=0", "integer >= 1"]),
    "tf32 with float64": (["dynamics.tf32=true", "dtype=float64"], ["dynamics.tf32=true needs dtype=float32"]),
    "T2 > T1 for bptt": (["estimator=bptt", "dynamics.T1=5", "dynamics.T2=8"],
                         ["dynamics.T2=8 must be <= dynamics.T1=5 for bptt"]),
    "beta zero": (["estimator=symmetric", "estimator.beta=0"], ["estimator.beta=0", "must be > 0"]),
    "beta negative": (["estimator=random_sign", "estimator.beta=-0.1"], ["estimator.beta=-0.1", "must be > 0"]),
    "lrs length": (["optimizer.lrs=[0.1]"], ["optimizer.lrs=[0.1] has 1 value(s)", "has 2 layers of weights"]),
    "wds length": (["model=cnn", "optimizer.wds=[0.0,0.0]"],
                   ["optimizer.wds=[0.0, 0.0] has 2 value(s)", "model=cnn has 3 layers of weights"]),
    "unknown activation": (["model.activation=relu"], ["model.activation='relu'", "expected one of", "my_hard_sig"]),
    "pools length": (["model=cnn", "model.pools=mmm"], ["model.pools='mmm'", "one letter per conv layer (2)"]),
    "kernels length": (["model=cnn", "model.kernels=[3]"], ["model.kernels=[3]", "one integer per conv layer (2"]),
    "strides length": (["model=cnn", "model.strides=[1,1,1]"], ["model.strides=[1, 1, 1]", "one integer per conv"]),
    "paddings length": (["model=cnn", "model.paddings=[1]"], ["model.paddings=[1]", "one integer per conv"]),
    "feature map shrinks to nothing": (["model=cnn", "task=digits", "model.paddings=[0,0]"],
                                       ["shrinks the 8x8 input of task=digits", "[3, 0]", "add padding"]),
    "empty fc": (["model=cnn", "model.fc=[]"], ["model.fc=[]", "at least one fully connected layer"]),
    "batch size zero": (["task.batch_size=0"], ["task.batch_size=0", "must be > 0"]),
    "batch size negative": (["task.batch_size=-8"], ["task.batch_size=-8", "must be > 0"]),
    "epochs negative": (["epochs=-1"], ["epochs=-1", "must be an integer >= 0"]),
    "dropout zero": (["model.dropouts=[1.0,0.0]"], ["model.dropouts=[1.0, 0.0]", "(0, 1]"]),
    "dropout above one": (["model.dropouts=[1.5,1.0]"], ["model.dropouts=[1.5, 1.0]", "(0, 1]"]),
    "dropouts length": (["model.dropouts=[1.0]"], ["model.dropouts=[1.0] has 1 value(s)", "2 layers"]),
    "softmax read-out with mse": (["loss=mse", "loss.softmax_readout=true"],
                                  ["loss.softmax_readout=true needs loss=cel"]),
    "vf_mlp with one layer": (["model=vf_mlp", "model.archi=[784,10]"],
                              ["model=vf_mlp needs at least two neuron layers", "it has 1"]),
    "vf_cnn with one layer": (["model=vf_cnn", "loss=cel", "model.channels=[4]", "model.kernels=[3]",
                               "model.strides=[1]", "model.paddings=[1]", "model.pools=m"],
                              ["model=vf_cnn needs at least two neuron layers"]),
    "mlp input does not fit the task": (["task=digits", "model.archi=[784,512,10]"],
                                        ["model.archi[0]=784", "task=digits (64 = 1x8x8)"]),
    "cnn output does not fit the task": (["model=cnn", "model.fc=[5]"], ["output layer has 5 units", "10 classes"]),
    "task shape overridden": (["task=cifar10", "task.in_channels=1"],
                              ["task.in_channels=1 does not fit task=cifar10", "3x32x32", "must be 3"]),
    "evaluate without a checkpoint": (["mode=evaluate"], ["mode=evaluate needs load_path=<run dir>"]),
    "typo added with +": (["+model.chanels=[8]"], ["unknown config key model.chanels", "did you mean model.channels?"]),
    "top-level typo added with +": (["+epoch=3"], ["unknown config key epoch", "did you mean epochs?"]),
    "not a number": (["optimizer.lr=abc"], ["optimizer.lr='abc' must be a number"]),
    "not an integer": (["task.batch_size=12.5"], ["task.batch_size=12.5 must be an integer"]),
    "null for a number": (["dynamics.T1=null"], ["dynamics.T1=null must be an integer"]),
    "not a list of integers": (["model=cnn", "model.kernels=[3,x]"],
                               ["model.kernels=[3, 'x'] must be a list of integers"]),
    "not true or false": (["optimizer.lr_decay=maybe"], ["optimizer.lr_decay='maybe' must be true or false"]),
    "infinite lr": (["optimizer.lr=inf"], ["optimizer.lr=inf must be a finite number > 0"]),
    "nan beta": (["estimator.beta=nan"], ["estimator.beta=nan", "must be > 0"]),
    "momentum of 1 or more": (["optimizer.momentum=1.0"], ["optimizer.momentum=1.0 must lie in [0, 1)"]),
    "limit_train zero": (["task.limit_train=0"], ["task.limit_train=0 must be a positive number of examples"]),
    "unknown task": (["task.name=imagenet"], ["task.name='imagenet' is not known", "mnist5k"]),
    # presets: a typo inside a YAML file, and a file that forgot its package line
    "typo in a preset": (["+experiment=typo"], ["unknown config key model.chanels", "did you mean model.channels?"]),
    "preset without package line": (["+experiment=nohdr"], ["experiment.epochs instead of epochs",
                                                            "# @package _global_"]),
}

PRESETS = {
    "typo.yaml": "# @package _global_\nmodel:\n  activation: tanh\n  chanels: [8]\n",
    "nohdr.yaml": "epochs: 3\n",
}


def _write_presets(root):
    (root / "experiment").mkdir(parents=True, exist_ok=True)
    for name, text in PRESETS.items():
        (root / "experiment" / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    """Every case composed by Hydra once, in one initialisation (the slow part). A wrong type or an
    unknown key in a YAML file is refused by the composition itself (the schemas of eqprop.config);
    that refusal is kept in the words launch.py prints (eqprop.config_errors)."""
    presets = _write_presets(tmp_path_factory.mktemp("presets"))
    out = {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name, (over, _) in BAD.items():
            if "+experiment" in over[0]:
                over = [f"hydra.searchpath=[file://{presets}]"] + over
            try:
                out[name] = OmegaConf.to_container(compose(config_name="config", overrides=over), resolve=True)
            except ConfigCompositionException as err:
                out[name] = ConfigError(explain(err, RunConfig, over) or err)
    return out


def _from_dict(composed):
    if isinstance(composed, ConfigError):
        raise composed
    return from_dict(composed)


@pytest.mark.parametrize("name", list(BAD))
def test_bad_config_is_refused_with_a_message_that_says_what_to_change(composed, name):
    with pytest.raises(ConfigError) as err:
        _from_dict(composed[name])
    msg = str(err.value)
    for fragment in BAD[name][1]:
        assert fragment in msg, (fragment, msg)


def test_every_shipped_option_and_preset_is_accepted():
    """The checks refuse nothing that the repo itself ships (the paper presets target a GPU)."""
    def names(group_dir):
        return sorted(str(p.relative_to(group_dir).with_suffix("")) for p in group_dir.rglob("*.yaml"))

    presets = [[f"+experiment={n}"] for n in names(ROOT / "conf" / "experiment")]
    presets += [[f"+sweep={n}"] for n in names(ROOT / "sweeps" / "sweep")]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for over in [[]] + presets:
            d = OmegaConf.to_container(compose(config_name="config", overrides=over), resolve=True)
            if d["mode"] in ("evaluate",):
                d["load_path"] = "somewhere"
            from_dict(d)


# --- checks that need the machine: devices, data on disk, run dirs (eqprop.app.prepare, in-process)

def _prepare(overrides, run_dir):
    from eqprop.app import prepare
    from tests.launch_utils import compose_cfg

    return prepare(compose_cfg(overrides), run_dir)


def _refused(overrides, run_dir):
    with pytest.raises(ConfigError) as err:
        _prepare(overrides, run_dir)
    return str(err.value)


def test_devices(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("there is a GPU here")
    msg = _refused(["device=cuda"], tmp_path)
    assert "device=cuda was asked for but no CUDA GPU is available here; use device=cpu" in msg
    assert "no CUDA GPU" in _refused(["device=0"], tmp_path)  # the original --device 0
    assert "device='gpu' is not a device; use auto, cpu, cuda or cuda:<index>" in _refused(["device=gpu"], tmp_path)


def test_missing_data_says_where_it_is_expected_and_how_to_get_it(tmp_path):
    msg = _refused(["task=cifar10", "task.download=false", f"task.data_dir={tmp_path}", "device=cpu"], tmp_path)
    assert f"the data set is not in {tmp_path.resolve() / 'cifar-10-batches-py'}" in msg
    assert "task.download=false" in msg and "cifar-10-python.tar.gz" in msg and "task=mnist5k" in msg

    t0 = time.monotonic()  # download=true: no network here, and no waiting on it either
    msg = _refused(["task=mnist", f"task.data_dir={tmp_path}", "device=cpu"], tmp_path)
    assert time.monotonic() - t0 < 15
    assert f"the data set is not in {tmp_path.resolve() / 'MNIST' / 'raw'}" in msg
    assert "cannot be downloaded from here" in msg and "MNIST('data', download=True)" in msg

    write_fake_mnist(tmp_path, 8, 8)  # once the files are there, the same config is accepted
    _prepare(["task=mnist", f"task.data_dir={tmp_path}", "device=cpu"], tmp_path)


def test_run_dirs_to_resume_or_evaluate(tmp_path):
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    assert f"resume={missing}: no such run dir" in _refused([f"resume={missing}"], missing)
    assert f"resume={empty}: no checkpoint.pt there, so no run to resume" in _refused([f"resume={empty}"], empty)
    msg = _refused(["mode=evaluate", f"load_path={missing}"], missing)
    assert f"load_path={missing} is not a directory" in msg
    msg = _refused(["mode=evaluate", f"load_path={empty}"], empty)
    assert f"load_path={empty} has no model.pt checkpoint" in msg


# --- the real launch.py

def _assert_refused(p, code, *fragments):
    assert p.returncode == code, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    for f in fragments:
        assert f in p.stderr, (f, p.stderr[-3000:])
    assert "Traceback" not in p.stderr + p.stdout
    assert "epoch 1/" not in p.stdout + p.stderr  # nothing ran


CLI = {
    # eqprop's own checks: exit 2, and the fresh run dir that Hydra created is removed again
    "typo added with +": (["+model.chanels=[8]"], 2, ["[eqprop] error: unknown config key model.chanels; "
                                                       "did you mean model.channels?"]),
    # a typo in a top-level key: eqprop's hint on the first try, before Hydra's "use +estimater="
    "top-level typo without +": (["estimater=symmetric"], 2, ["[eqprop] error: unknown config key estimater; "
                                                               "did you mean estimator?"]),
    # checked before the data: task=mnist is not on disk here either, yet the message is about T2
    "bptt T2 > T1, before the data": (["estimator=bptt", "task=mnist", "dynamics.T2=50"], 2,
                                      ["dynamics.T2=50 must be <= dynamics.T1=30 for bptt"]),
    # no nudged phase: a run would "finish" without learning anything
    "T2 zero": (["dynamics.T2=0"], 2, ["[eqprop] error: dynamics.T2=0 must be a positive integer"]),
    "no GPU": (["device=cuda"], 2, ["device=cuda was asked for but no CUDA GPU is available here"]),
    "no data, no network": (["task=cifar10", "task.data_dir=@tmp@/data"], 2,
                            ["task=cifar10: the data set is not in", "cannot be downloaded from here"]),
    "resume of a missing run": (["resume=@tmp@/nothing-here"], 2,
                                ["resume=@tmp@/nothing-here: no checkpoint.pt there"]),
    "typo in a preset": (["hydra.searchpath=[file://@tmp@/presets]", "+experiment=typo"], 2,
                         ["unknown config key model.chanels; did you mean model.channels?"]),
    # refused while Hydra composes (the schemas), reworded by launch.py: eqprop's message, exit 2
    "not a number": (["optimizer.lr=abc"], 2, ["[eqprop] error: optimizer.lr='abc' must be a number"]),
    "not a list of integers": (["model=cnn", "model.kernels=[3,x]"], 2,
                               ["[eqprop] error: model.kernels=[3, 'x'] must be a list of integers"]),
    # a typo in a group's key without +: eqprop's hint, not Hydra's "use +model.chanels=", which the closed
    # schema would refuse next
    "typo without +": (["model.chanels=[8]"], 2, ["[eqprop] error: unknown config key model.chanels; "
                                                  "did you mean model.channels?"]),
    "typo in a section without +": (["dynamics.T11=5"], 2, ["[eqprop] error: unknown config key dynamics.T11; "
                                                           "did you mean dynamics.T1?"]),
    # Hydra's own refusal (unknown option): its message, exit 1, before any of eqprop runs
    "Hydra: unknown option": (["model=resnet"], 1, ["Could not find 'model/resnet'", "Available options in 'model'",
                                                    "vf_cnn"]),
}


@pytest.mark.parametrize("name", list(CLI))
def test_launch_refuses_bad_input(tmp_path, name):
    over, code, fragments = CLI[name]
    _write_presets(tmp_path / "presets")
    over = [o.replace("@tmp@", str(tmp_path)) for o in over]
    run_dir = tmp_path / "run"
    args = over if any(o.startswith("resume=") for o in over) else over + [f"hydra.run.dir={run_dir}"]
    t0 = time.monotonic()
    p = launch_cli(args + ["device=cpu"] * (name != "no GPU"), timeout=120, env=ONE_THREAD)
    _assert_refused(p, code, *[f.replace("@tmp@", str(tmp_path)) for f in fragments])
    assert time.monotonic() - t0 < 60
    assert not run_dir.exists() and not (tmp_path / "nothing-here").exists()  # no run left behind
    assert not list(tmp_path.rglob("checkpoint.pt"))

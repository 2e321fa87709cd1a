"""eqprop.dashboard: the spec's panels show exactly metric keys that a real offline eqprop run logged
(read back from its .wandb file), the Workspace builds from the spec without a server, and
--dry-run prints the spec."""
import json
import re
import subprocess
import sys

import pytest

from eqprop.dashboard import ESTIMATOR_COLOURS, DashboardSpec, to_workspace
from eqprop.estimators import ESTIMATORS
from tests.launch_utils import ROOT
from tests.test_wandb import SMALL, history, inspect_summary, no_login, offline_runs  # noqa: F401 (fixture)

SPEC = DashboardSpec("my-team", "eqprop", groups=("digits-mlp-cel", "digits-vf_mlp-cel"))
pytestmark = pytest.mark.filterwarnings("ignore:Pydantic V1 style")
HISTOGRAMS = "activity/"  # per-layer histograms: W&B's own histogram panels, not line plots


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """The metric keys and summary of a real offline W&B run of launch.py: a vf_mlp (angles) with
    the GDU check during training, so every family of keys eqprop logs is there."""
    import os

    run_dir = tmp_path_factory.mktemp("wandb_run")
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), NETRC=str(home / ".netrc"), WANDB_MODE="offline")
    over = SMALL + ["logger=wandb", "loss=cel", "model=vf_mlp", "epochs=1", "gdu.every=1", "gdu.n_examples=2"]
    cmd = [sys.executable, str(ROOT / "launch.py"), *over, f"hydra.run.dir={run_dir}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    [wandb_run] = offline_runs(run_dir)
    rows = history(wandb_run, key="_step")
    keys = {k.split(".")[0] if k.startswith(HISTOGRAMS) else k for r in rows for k in r if not k.startswith("_")}
    return keys, inspect_summary(wandb_run)


def _shown(panel, keys):
    return set(panel.y) | ({k for k in keys if re.match(panel.y_regex, k)} if panel.y_regex else set())


def test_every_panel_shows_keys_that_a_real_run_logged_and_every_logged_metric_has_a_panel(logged):
    keys, _ = logged
    assert {"test/acc", "gdu_step", "lr/layer_0", "angle/synapse_1", "gdu_rmse/synapses.0.weight"} <= keys
    for panel in SPEC.panels():
        assert panel.x in keys, f"panel {panel.title!r}: x axis {panel.x!r} was not logged"
        missing = set(panel.y) - keys
        assert not missing, f"panel {panel.title!r} shows {sorted(missing)}, which eqprop does not log"
        assert _shown(panel, keys), f"panel {panel.title!r}: its regex {panel.y_regex!r} matches no logged key"
    steps = {p.x for p in SPEC.panels()}
    shown = set().union(*(_shown(p, keys) for p in SPEC.panels()))
    unshown = {k for k in keys if not k.startswith(HISTOGRAMS)} - shown - steps
    assert not unshown, f"logged but on no panel: {sorted(unshown)}"


def test_the_runs_table_columns_are_in_a_real_runs_summary(logged):
    _, summary = logged
    for key in SPEC.summary_columns:
        assert key in summary["summary"], f"column summary:{key} is not in the summary {sorted(summary['summary'])}"


def test_the_workspace_builds_from_the_spec_without_a_server():
    model = to_workspace(SPEC)._to_model().model_dump(by_alias=True, exclude_none=True)
    sections = model["spec"]["section"]["panelBankConfig"]["sections"]
    assert [s["name"] for s in sections] == [s.name for s in SPEC.sections]
    for section, want in zip(sections, SPEC.sections):
        for got, p in zip(section["panels"], want.panels, strict=True):
            c = got["config"]
            assert (c["chartTitle"], c["xAxis"], c["metrics"], c.get("metricRegex")) == \
                   (p.title, p.x, list(p.y), p.y_regex)
            assert (c["groupAgg"], c["groupArea"]) == ("mean", "stddev")  # mean ± std over seeds
    [runset] = model["spec"]["section"]["runSets"]
    assert runset["grouping"] == [{"section": "run", "name": "group"}, {"section": "run", "name": "jobType"}]
    assert runset["runFeed"]["columnOrder"] == ["run:displayName"] + [f"summary:{k}" for k in SPEC.summary_columns]
    colours = model["spec"]["section"]["customRunColors"]
    assert len(colours) == len(SPEC.groups) * len(ESTIMATOR_COLOURS)
    bptt = [c for k, c in colours.items() if "digits-mlp-cel" in k and "bptt" in k]
    assert bptt == ["#000000"]  # BPTT, the reference, in black
    settings = model["spec"]["section"]["settings"]
    assert (settings["xAxis"], settings["maxRuns"], settings["useRunsTableGroupingInPanels"]) == ("epoch", 200, True)


def test_every_estimator_has_its_own_colour():
    assert set(ESTIMATOR_COLOURS) == set(ESTIMATORS)
    assert len(set(ESTIMATOR_COLOURS.values())) == len(ESTIMATOR_COLOURS)


def test_dry_run_prints_the_spec_and_needs_no_server(no_login):  # noqa: F811
    cmd = [sys.executable, "-m", "eqprop.dashboard", "--entity", "my-team", "--project", "eqprop",
           "--group", "digits-mlp-cel", "--group", "digits-vf_mlp-cel", "--dry-run"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(p.stdout) == json.loads(json.dumps(SPEC.to_dict()))
    # without --dry-run and without a login: refused at once, saying what to do
    p = subprocess.run(cmd[:-1], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "no W&B login here" in p.stderr and "wandb login" in p.stderr

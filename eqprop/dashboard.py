"""The EP-versus-BPTT W&B workspace, as code: `python -m eqprop.dashboard --entity E --project P`.

One spec (the dataclasses below) describes the saved view: runs grouped by W&B group (one per
task/model/loss comparison) then job type (one per estimator), line plots against `epoch` with the
seeds of a group collapsed into mean ± std, one colour per estimator and BPTT in black as the
reference. `--dry-run` prints the spec as JSON; otherwise the same spec is turned into a
wandb-workspaces Workspace and saved (created, or updated with --url). The metric keys are those
eqprop.loggers.wandb_logger logs; tests/test_dashboard.py checks them against a real offline run.
"""
import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from eqprop.report.plot import FAMILIES, family_colour

log = logging.getLogger(__name__)

# one colour per estimator (W&B job type): the darkest of its colour family in report.png, BPTT black
ESTIMATOR_COLOURS = {name: family_colour(name) for name in FAMILIES}
RUN_GROUPING = ("Group", "JobType")  # W&B run attributes: logger.group, then logger.job_type
SEED_AGGREGATE, SEED_SPREAD = "mean", "stddev"
DEFAULT_NAME = "EP vs BPTT"


@dataclass(frozen=True)
class PanelSpec:
    title: str
    x: str                                   # the step metric
    y: Tuple[str, ...] = ()                  # exact metric keys
    y_regex: Optional[str] = None            # or every key of a per-layer family
    aggregate: bool = True                   # mean ± std over the runs (seeds) of a group


@dataclass(frozen=True)
class SectionSpec:
    name: str
    panels: Tuple[PanelSpec, ...]
    is_open: bool = True


def _epoch_panel(title: str, *keys: str, regex: Optional[str] = None) -> PanelSpec:
    return PanelSpec(title, "epoch", tuple(keys), regex)


SECTIONS = (
    SectionSpec("EP vs BPTT: accuracy and loss", (
        _epoch_panel("test accuracy", "test/acc"),
        _epoch_panel("train accuracy", "train/acc"),
        _epoch_panel("test loss", "test/loss"),
        _epoch_panel("train loss", "train/loss"),
    )),
    SectionSpec("GDU: EP updates against BPTT gradients", (
        PanelSpec("GDU RMSE per parameter / neuron layer", "gdu_step", y_regex=r"^gdu_rmse/.+$"),
        PanelSpec("GDU sign error per parameter / neuron layer", "gdu_step", y_regex=r"^gdu_sign_error/.+$"),
    )),
    SectionSpec("Cost: relaxation steps and time", (
        _epoch_panel("relaxation steps per batch", "steps/free", "steps/nudged"),
        _epoch_panel("seconds per epoch", "time/epoch_seconds"),
    )),
    SectionSpec("Learning rates per layer", (_epoch_panel("lr per layer", regex=r"^lr/layer_\d+$"),)),
    SectionSpec("Forward/backward angles (vf_mlp, vf_cnn)", (
        _epoch_panel("angle per synapse (degrees)", regex=r"^angle/synapse_\d+$"),
    ), is_open=False),
)
# the runs table: the summary eqprop writes at the end of a run
SUMMARY_COLUMNS = ("best_test_acc", "final_test_acc", "epochs", "status")


@dataclass(frozen=True)
class DashboardSpec:
    entity: str
    project: str
    name: str = DEFAULT_NAME
    x_axis: str = "epoch"
    grouping: Tuple[str, ...] = RUN_GROUPING
    groups: Tuple[str, ...] = ()             # W&B groups whose estimators get their colours
    colours: Dict[str, str] = field(default_factory=lambda: dict(ESTIMATOR_COLOURS))
    aggregate: str = SEED_AGGREGATE
    spread: str = SEED_SPREAD
    summary_columns: Tuple[str, ...] = SUMMARY_COLUMNS
    # runs (or groups) drawn per panel; W&B's default of 10 would drop seeds from the means of a sweep
    max_runs: int = 200
    sections: Tuple[SectionSpec, ...] = SECTIONS

    def to_dict(self) -> dict:
        return asdict(self)

    def panels(self) -> List[PanelSpec]:
        return [p for s in self.sections for p in s.panels]


def to_workspace(spec: DashboardSpec):
    """The wandb-workspaces Workspace that `spec` describes (built locally, no server)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    def panel(p: PanelSpec):
        agg = dict(groupby_aggfunc=spec.aggregate, groupby_rangefunc=spec.spread) if p.aggregate else {}
        return wr.LinePlot(title=p.title, x=p.x, y=list(p.y), metric_regex=p.y_regex, **agg)

    colours = {ws.GroupPath(g, est): c for g in spec.groups for est, c in spec.colours.items()}
    return ws.Workspace(
        entity=spec.entity, project=spec.project, name=spec.name,
        sections=[ws.Section(name=s.name, panels=[panel(p) for p in s.panels], is_open=s.is_open)
                  for s in spec.sections],
        settings=ws.WorkspaceSettings(x_axis=spec.x_axis, max_runs=spec.max_runs),
        runset_settings=ws.RunsetSettings(groupby=[ws.Metric(k) for k in spec.grouping], group_colors=colours,
                                          pinned_columns=[f"summary:{k}" for k in spec.summary_columns]),
    )


def save(spec: DashboardSpec, url: Optional[str] = None) -> str:
    """Save the workspace to W&B: a new saved view, or the view at `url` replaced by the spec's."""
    import wandb_workspaces.workspaces as ws

    built = to_workspace(spec)
    if url:
        existing = ws.Workspace.from_url(url)
        for attr in ("name", "sections", "settings", "runset_settings"):
            setattr(existing, attr, getattr(built, attr))
        built = existing
    return built.save().url


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eqprop.dashboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--entity", required=True, help="W&B entity (user or team) that owns the project")
    p.add_argument("--project", required=True, help="W&B project of the runs (logger.project, default eqprop)")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"name of the saved view (default: {DEFAULT_NAME!r})")
    p.add_argument("--group", action="append", default=[], metavar="GROUP",
                   help="a W&B group (logger.group, e.g. digits-mlp-cel) whose estimators get the fixed colours; "
                        "repeat for several; without it W&B picks the colours")
    p.add_argument("--url", help="URL of a saved view to update instead of creating a new one")
    p.add_argument("--dry-run", action="store_true", help="print the spec as JSON and contact no server")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="[eqprop] %(message)s")
    args = parse_args(argv)
    spec = DashboardSpec(args.entity, args.project, args.name, groups=tuple(dict.fromkeys(args.group)))
    if args.dry_run:
        sys.stdout.write(json.dumps(spec.to_dict(), indent=2) + "\n")
        return 0
    from eqprop.loggers.wandb_logger import has_credentials

    if not has_credentials():
        log.error("no W&B login here (no WANDB_API_KEY, no api.wandb.ai entry in ~/.netrc): run `wandb login` "
                  "first, or use --dry-run to see the spec without a server")
        return 2
    try:
        url = save(spec, args.url)
    except Exception as err:  # noqa: BLE001 - no login, no network, no such view: say which and stop
        log.error("could not save the workspace to W&B (%s: %s); check `wandb login` and --entity/--project, "
                  "or use --dry-run to see the spec without a server", type(err).__name__, err)
        return 1
    log.info("saved the %r workspace: %s", spec.name, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())

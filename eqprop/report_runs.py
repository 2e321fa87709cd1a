"""Only for eqprop/app.py's `from eqprop.report_runs import stored_config`, which another branch of this
refactor rewrites: at merge app.py imports eqprop.runs.stored_config and this file is deleted."""
from eqprop.runs import stored_config  # noqa: F401

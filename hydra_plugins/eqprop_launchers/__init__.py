# Hydra only instantiates launchers defined under the hydra_plugins namespace package; this one
# is found because the repo root is on sys.path (launch.py's dir) and, in jobs, on PYTHONPATH.
# No __init__.py in hydra_plugins/ itself: it must stay a namespace package shared with the
# installed plugins.

# Hydra only instantiates sweepers defined under the hydra_plugins namespace package (see
# hydra_plugins/eqprop_launchers/__init__.py for how this one is found).

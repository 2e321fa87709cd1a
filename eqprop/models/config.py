"""The `model` config group: its schema (conf/model/*.yaml extend it) and the checks of its own values.
The rules that tie it to the task, the loss or the optimiser are eqprop.config.validate's."""
from dataclasses import dataclass
from typing import List, Optional

from eqprop.activations import ACTIVATIONS
from eqprop.errors import expect, positive
from eqprop.models import MODELS
from eqprop.models.synapses import POOLS, conv_pool_size


@dataclass
class ModelConfig:
    name: str = "mlp"                        # mlp | vf_mlp | cnn | vf_cnn (vf_: separate backward weights)
    activation: str = "my_sigmoid"           # neuron non-linearity (eqprop/activations.py)
    scale: Optional[float] = None            # multiply the default initialisation (the original --scale)
    archi: Optional[List[int]] = None        # mlp: layer sizes, input first (the original --archi)
    channels: Optional[List[int]] = None     # cnn: feature maps per conv layer
    kernels: Optional[List[int]] = None      # cnn: kernel size per conv layer
    strides: Optional[List[int]] = None      # cnn: stride per conv layer
    paddings: Optional[List[int]] = None     # cnn: padding per conv layer
    pools: Optional[str] = None              # cnn: one letter per conv layer, m max / a average / i none (2x2)
    fc: Optional[List[int]] = None           # cnn: fully connected sizes after the convs, the output last
    same_update: bool = False                # vf_*: forward and backward weights get the same (averaged) update
    dropouts: Optional[List[float]] = None   # keep probability per layer of weights (1.0 = no dropout)

    @property
    def dense(self) -> bool:
        """Layers given by `archi` (mlp family) rather than by convs and `fc` (cnn family)."""
        return MODELS[self.name].dense

    @property
    def vector_field(self) -> bool:
        """Separate backward weights (vf_mlp, vf_cnn)."""
        return MODELS[self.name].vector_field

    @property
    def n_synapses(self) -> int:
        """Layers of weights."""
        return len(self.archi) - 1 if self.dense else len(self.channels) + len(self.fc)

    @property
    def output_units(self) -> int:
        return self.archi[-1] if self.dense else self.fc[-1]

    def feature_map_sizes(self, in_size: int) -> List[int]:
        """Height (= width) of the feature maps after each conv(+pool) layer, on in_size x in_size inputs."""
        sizes = []
        for k, s, p, pool in zip(self.kernels, self.strides, self.paddings, self.pools):
            in_size = conv_pool_size(in_size, k, s, p, pool)
            sizes.append(in_size)
        return sizes

    def check(self) -> None:
        """ConfigError unless every model.* value is one the model builder can take."""
        expect(self.activation in ACTIVATIONS,
               f"model.activation={self.activation!r} is not known; expected one of {sorted(ACTIVATIONS)}")
        expect(self.name in MODELS, f"model.name={self.name!r} is not known; expected one of {list(MODELS)}")
        if self.dense:
            expect(self.archi is not None and len(self.archi) >= 2 and all(a > 0 for a in self.archi),
                   f"model.archi={self.archi!r} must list at least two positive layer sizes, input first "
                   "(e.g. [784,512,10])")
        else:
            self._check_convs()
        expect(self.scale is None or positive(self.scale),
               f"model.scale={self.scale!r} must be a finite number > 0, or null")
        if self.dropouts is not None:
            expect(len(self.dropouts) == self.n_synapses,
                   f"model.dropouts={self.dropouts} has {len(self.dropouts)} value(s) but model={self.name} has "
                   f"{self.n_synapses} layers; give one keep probability per layer")
            expect(all(0 < p <= 1 for p in self.dropouts),
                   f"model.dropouts={self.dropouts} are keep probabilities and must lie in (0, 1]")

    def _check_convs(self) -> None:
        n = len(self.channels or [])
        expect(n >= 1 and all(c > 0 for c in self.channels),
               f"model.channels={self.channels!r} must list at least one positive number of feature maps")
        for key in ("kernels", "strides", "paddings"):
            v = getattr(self, key)
            expect(v is not None and len(v) == n,
                   f"model.{key}={v!r} must have one integer per conv layer ({n}, as model.channels={self.channels})")
        expect(all(k > 0 for k in self.kernels) and all(s > 0 for s in self.strides)
               and all(p >= 0 for p in self.paddings),
               "model.kernels and model.strides must be > 0 and model.paddings >= 0")
        expect(self.pools is not None and len(self.pools) == n and all(c in POOLS for c in self.pools),
               f"model.pools={self.pools!r} must have one letter per conv layer ({n}): m=max, a=average, i=none")
        expect(self.fc is not None and len(self.fc) >= 1 and all(f > 0 for f in self.fc),
               f"model.fc={self.fc!r} must list at least one fully connected layer (the last one is the output, "
               "e.g. [10])")

"""One-sided EP with the sign of beta drawn per batch: the O(beta) bias cancels on average."""
import torch

from eqprop.estimators.one_sided import OneSided


class RandomSign(OneSided):
    name = "random_sign"

    def sign(self, generator: torch.Generator) -> float:
        return 1.0 if torch.randint(0, 2, (1,), generator=generator).item() else -1.0

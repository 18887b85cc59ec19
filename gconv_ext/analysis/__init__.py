"""Equivariance analysis after "Using and Abusing Equivariance" (Edixhoven et al. 2023).

* :mod:`.equivariance`: per-layer equivariance errors (relative and L1) with forward hooks, averaged over
  batches; invariance error of the logits; which input sizes are exact for a network.
* :mod:`.parity`: the MNIST input-size parity experiment (exact 26/28/30 vs inexact 27/29 vs a Z2 CNN).
* :mod:`.unequivariance`: a strided P4 conv at an inexact size learning to tell an image from its rotation.
* :mod:`.canonicalization`: how well an STN's warp turns rotated copies of a digit into one orientation.
"""
from .canonicalization import (CANONICALIZATION_ANGLES, canonicalization_error,
                               canonicalization_error_from_angles, warp_angles_deg)
from .equivariance import (average_over_batches, default_layers, exact_input_sizes, invariance_error,
                           layer_equivariance_errors)
from .parity import (ANGLES, PARITY_BUDGETS, ParityBudget, ParityCNN, ParityGCNN, fit_size, run_parity,
                     summarize_parity)
from .unequivariance import LN2, UnequivarianceNet, learn_unequivariance

__all__ = [
    "layer_equivariance_errors",
    "average_over_batches",
    "invariance_error",
    "exact_input_sizes",
    "default_layers",
    "ParityGCNN",
    "ParityCNN",
    "ParityBudget",
    "PARITY_BUDGETS",
    "ANGLES",
    "fit_size",
    "run_parity",
    "summarize_parity",
    "UnequivarianceNet",
    "learn_unequivariance",
    "LN2",
    "CANONICALIZATION_ANGLES",
    "canonicalization_error",
    "canonicalization_error_from_angles",
    "warp_angles_deg",
]

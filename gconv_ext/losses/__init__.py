"""Training losses: the implicit-equivariance (IEN) loss on orbit-pooled CNN features."""
from .ien import (TRANSFORMS, EquivarianceLoss, IENOutput, OrbitSpec, apply_transform, invert_transform, orbit_pool,
                  sample_transforms)

__all__ = ["OrbitSpec", "orbit_pool", "EquivarianceLoss", "IENOutput", "TRANSFORMS", "sample_transforms",
           "apply_transform", "invert_transform"]

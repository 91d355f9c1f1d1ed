"""Models: backbones (MLP, small CNN) and scenario heads (multi-head, incremental)."""

from forgetless.models.heads import INACTIVE_LOGIT, IncrementalHead, MultiHead
from forgetless.models.model import ContinualModel, build_model

__all__ = ["INACTIVE_LOGIT", "ContinualModel", "IncrementalHead", "MultiHead", "build_model"]

"""Models: backbones (MLP, small CNN, ResNets, any user module) and scenario heads."""

from forgetless.models.heads import INACTIVE_LOGIT, IncrementalHead, MultiHead
from forgetless.models.model import ContinualModel, build_model, model_for

__all__ = ["INACTIVE_LOGIT", "ContinualModel", "IncrementalHead", "MultiHead", "build_model", "model_for"]

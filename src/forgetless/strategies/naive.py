"""Naive fine-tuning: train on each task in turn with nothing against forgetting.

The lower bound every method is compared to (the "fine-tuning" baseline of every paper).
"""

from __future__ import annotations

from forgetless.strategies import register
from forgetless.strategies.base import Strategy


@register
class Naive(Strategy):
    name = "naive"
    family = "baseline"
    speed_target = 1.10
    summary = "plain fine-tuning on each task in turn (the lower bound)"

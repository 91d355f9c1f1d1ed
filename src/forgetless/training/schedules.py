"""Fine-tuning schedules that compose with every strategy (options of the run config).

Schedules that act during training (gradual unfreezing, evaluation-driven stopping) are
strategies built from the run's options and appended to the run's strategies.
"""

from __future__ import annotations

from forgetless.config import RunConfig
from forgetless.strategies.base import Strategy


def schedule_strategies(config: RunConfig) -> list[Strategy]:
    """The schedule strategies the options of ``config`` ask for (none by default)."""
    return []

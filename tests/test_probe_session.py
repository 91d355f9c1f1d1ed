"""Defects the session's hostile probe found outside the files that own a feature's tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from forgetless.config import make_config
from forgetless.training.experiment import check_memory, load_scenario, resolve

FACTORY = '''
import torch
from torch import nn


def reads_a_value(shape):
    """Sizes its layer from a tensor's value (int() of a tensor), as many user factories do."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape).prod()), 12), nn.ReLU())
'''


def test_a_user_factory_that_reads_a_tensor_value_passes_the_memory_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memory check builds the model on the meta device, where a tensor has no value: a
    factory calling int() on one was refused as if it were broken (it runs fine on the CPU)."""
    (tmp_path / "probe_factory_mod.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "probe_factory_mod", raising=False)
    config = resolve(
        make_config(benchmark="split-digits", tasks=2, model="probe_factory_mod:reads_a_value", strategies=["naive"])
    )
    scenario = load_scenario(config, 0)
    check_memory(config, scenario)  # fits: no error
    with pytest.raises(Exception, match="more than the"):  # and the estimate still counts its parameters
        check_memory(config, scenario, available=1000)


@pytest.mark.parametrize("combination", ["ewc+packnet", "packnet+ewc", "si+progressive", "mas+supermask", "lora+si"])
def test_a_regularizer_with_an_isolation_method_is_refused_in_one_line(combination: str) -> None:
    """Found by the session's probe: several such pairs failed mid-run with an internal error."""
    from forgetless.errors import ConfigError
    from forgetless.strategies import make_strategies

    with pytest.raises(ConfigError, match="run them as separate strategies"):
        make_strategies(combination, scenario="task")

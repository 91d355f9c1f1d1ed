"""Weight initialisation (forgetless.models.init): the formula, the default, the run setting."""

from __future__ import annotations

import math

import pytest
import torch

from forgetless.config import make_config
from forgetless.errors import ConfigError
from forgetless.models import build_model
from forgetless.models.init import initialise


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def test_pytorch_init_is_the_constructors_own() -> None:
    torch.manual_seed(3)
    plain = build_model("mlp", (1, 8, 8), [10], False, [32, 16])
    torch.manual_seed(3)
    named = build_model("mlp", (1, 8, 8), [10], False, [32, 16], init="pytorch")
    for a, b in zip(plain.state_dict().values(), named.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_xavier_bounds_and_zero_biases(kind: str) -> None:
    """Glorot & Bengio (2010), eq. 16: U(+-sqrt(6 / (fan_in + fan_out))); biases 0."""
    torch.manual_seed(0)
    model = build_model(kind, (1, 16, 16), [3, 4], True, [64, 32] if kind == "mlp" else [8], init="xavier")
    for layer in _layers(model):
        fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
        fan_in = layer.weight.shape[1] * layer.weight[0, 0].numel()
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.9 * bound  # fills the interval, not a narrower one
        assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)
        assert layer.bias is None or not layer.bias.any()


def test_xavier_weights_differ_from_pytorchs_and_depend_on_the_seed() -> None:
    def first_weight(seed: int, init: str) -> torch.Tensor:
        torch.manual_seed(seed)
        return _layers(build_model("mlp", (1, 28, 28), [10], False, [400, 400], init=init))[0].weight

    assert torch.equal(first_weight(1, "xavier"), first_weight(1, "xavier"))
    assert not torch.equal(first_weight(1, "xavier"), first_weight(2, "xavier"))
    # 784 -> 400: Xavier's bound sqrt(6/1184) = 0.0712 is 2.0x PyTorch's 1/sqrt(784) = 0.0357
    ratio = first_weight(1, "xavier").abs().max() / first_weight(1, "pytorch").abs().max()
    assert ratio.item() == pytest.approx(math.sqrt(6 / 1184) * 28, rel=0.02)


def test_init_is_a_run_setting_with_a_clear_error() -> None:
    assert make_config().init == "pytorch"
    assert make_config(init="xavier").init == "xavier"
    with pytest.raises(ConfigError, match="init"):
        make_config(init="kaiming")
    with pytest.raises(ValueError, match="unknown init"):
        initialise(torch.nn.Linear(2, 2), "kaiming")  # type: ignore[arg-type]

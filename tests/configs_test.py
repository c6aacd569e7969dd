"""Every model config builds a ModelConfig with the released parameter count."""

import importlib

import jax
import pytest

from gptjax import model as M


@pytest.mark.parametrize("name, expected", [
    ("gpt2_small", 124_439_808), ("gpt2_medium", 354_823_168), ("gpt2_large", 774_030_080),
    ("gpt2_xl", 1_557_611_200), ("gpt1", 116_534_784)
])
def test_model_configs_have_exact_parameter_counts(name, expected):
  config = M.ModelConfig.from_dict(importlib.import_module(f"configs.{name}").get_config().model.to_dict())
  assert M.count_params(jax.eval_shape(lambda: M.init_params(config, jax.random.key(0)))) == expected

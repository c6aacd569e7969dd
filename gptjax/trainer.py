"""The pre-training names of the one loop, kept for code that imports them (`experiments/bench_train.py`, tests).

The loop is `gptjax.train.loop`, the language-modelling objective `gptjax.train.objectives.LanguageModeling`.
`make_train_step(model, ...)`, `init_train_state(model_config, ...)` and `state_shardings(model_config, ...)` take
the GPT itself here, as they always did; the loop's versions take any objective.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from gptjax import model as model_lib
from gptjax.train import step as _loop
from gptjax.train.loop import train_and_evaluate  # noqa: F401  (re-exported)
from gptjax.train.step import TrainState  # noqa: F401
from gptjax.train.objectives import evaluate, loss_fn, parse_eval_tasks, run_eval_tasks  # noqa: F401


class _GPTObjective:
  """`LanguageModeling`'s loss on a bare `GPT` (no data), for the pure-step helpers below."""

  def __init__(self, model: model_lib.GPT):
    self.model = model

  def normalizer(self, batch):
    B, L1 = batch["tokens"].shape
    return {"tokens": jax.numpy.asarray(B * (L1 - 1), jax.numpy.float32)}

  def loss(self, params, batch, rng, *, deterministic, normalizer):
    loss_sum, _ = loss_fn(params, batch["tokens"], rng, model=self.model, deterministic=deterministic)
    return loss_sum / normalizer["tokens"], {}


def make_train_step(model: model_lib.GPT, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                    num_microbatches: int = 1):
  """`train_step(state, tokens_BL1, rng) -> (state, {'loss', 'grad_norm'})` of next-token cross-entropy."""
  step = _loop.make_train_step(_GPTObjective(model), tx, mesh, num_microbatches)
  return lambda state, tokens_BL1, rng: step(state, {"tokens": tokens_BL1}, rng)


def make_eval_step(model: model_lib.GPT):
  """The pure `eval_step(params, batch) -> (loss_sum, num_tokens)`, dropout off."""
  return lambda params, tokens_BL1: loss_fn(params, tokens_BL1, None, model=model, deterministic=True)


def _init(config: model_lib.ModelConfig):
  return lambda rng: model_lib.init_params(config, rng)


def state_shardings(config: model_lib.ModelConfig, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh):
  """(shardings, shapes) of the GPT's `TrainState` on `mesh`."""
  return _loop.state_shardings(_init(config), tx, mesh)


def init_train_state(config: model_lib.ModelConfig, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                     rng: jax.Array, params: Any = None):
  """The GPT's `TrainState` built in its sharded layout (see `gptjax.train.loop.init_train_state`)."""
  return _loop.init_train_state(_init(config), tx, mesh, rng, params)

"""The pure half of the loop: the sharded `TrainState`, how it is built, and one training step of any objective.

Build sharded state without materialising it: `eval_shape` of the objective's boxed init -> logical partition specs
(`gptjax.sharding`) -> `jit(init, out_shardings=...)`. The step, `train_step(state, batch, rng)`, splits the batch
into microbatches whose losses (each a sum over the microbatch divided by the whole batch's count, see
`gptjax.train.objectives`) and gradients add up to the large-batch update.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gptjax import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. Leaves are plain (unboxed) arrays; their shardings live beside, in a like tree.

  Attributes:
    step: int32 scalar, updates applied so far.
    params: the trained parameters (float32 unless `param_dtype` says otherwise).
    opt_state: the optax state.
  """
  step: jax.Array
  params: Any
  opt_state: Any


# ---------------------------------------------------------------------------------------------------------------
# Pure functions: steps and state construction, for any objective.


def _interleave(batch, num_microbatches: int):
  """Reorders rows so that microbatch i takes rows i, i + M, i + 2M, ...: rows every device already holds."""
  def one(x):
    B = x.shape[0]
    return x.reshape((B // num_microbatches, num_microbatches) + x.shape[1:]).swapaxes(0, 1).reshape(x.shape)
  return jax.tree.map(one, batch)


def make_train_step(objective, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                    num_microbatches: int = 1):
  """The pure `train_step(state, batch, rng[, frozen]) -> (state, metrics)` of `objective`.

  `rng` is the run's dropout key; the step's own key is `fold_in(rng, state.step)` (microbatch i of several gets
  `fold_in` of that with i). `metrics` holds the batch's loss, the global gradient norm (before clipping) and the
  objective's own terms.
  """
  batch_sharding = sharding.batch_sharding(mesh)

  def train_step(state: TrainState, batch, rng: jax.Array, frozen: Any = None):
    """One update. `frozen`: parameters the loss reads but never trains (a distillation teacher's), or None."""

    def micro_loss(params, microbatch, rng, normalizer):
      # Each microbatch is spread over every data-parallel device, not left on the few that hold its rows.
      microbatch = jax.lax.with_sharding_constraint(microbatch, batch_sharding)
      extra = {} if frozen is None else {"frozen": frozen}
      return objective.loss(params, microbatch, rng, deterministic=False, normalizer=normalizer, **extra)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    rng = jax.random.fold_in(rng, state.step)
    normalizer = objective.normalizer(batch)  # The whole batch's counts: every microbatch divides by them.
    if num_microbatches == 1:
      (loss, terms), grads = grad_fn(state.params, batch, rng, normalizer)
    else:
      micro = jax.tree.map(lambda x: x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:]),
                           _interleave(batch, num_microbatches))

      def body(carry, xs):
        index, microbatch = xs
        (loss_i, terms_i), grads_i = grad_fn(state.params, microbatch, jax.random.fold_in(rng, index), normalizer)
        return jax.tree.map(jnp.add, carry, (loss_i, terms_i, grads_i)), None

      # Accumulate in float32 whatever the param dtype: many small bf16 additions lose the low bits.
      shapes = jax.eval_shape(lambda: grad_fn(state.params, jax.tree.map(lambda x: x[0], micro), rng, normalizer))
      (_, terms_shape), _ = shapes
      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), terms_shape),
               jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), state.params))
      (loss, terms, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches), micro))
      grads = jax.tree.map(lambda g, p: g.astype(jnp.result_type(p)), grads, state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **terms}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def abstract_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation):
  """The boxed `TrainState` as shapes only, and the init function that builds it.

  Args:
    init_params: rng -> parameters boxed in `nn.LogicallyPartitioned` (an objective's `init_params`).
    tx: the optimizer.

  Returns:
    (init_boxed, abstract): `init_boxed(rng)` builds the boxed state; `abstract = jax.eval_shape(init_boxed, key)`.
  """
  def init_boxed(rng):
    params = init_params(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return init_boxed, jax.eval_shape(init_boxed, jax.random.key(0))


def state_shardings(init_params, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh):
  """(shardings, shapes): `NamedSharding`s of the unboxed `TrainState` on `mesh`, and its ShapeDtypeStructs."""
  _, boxed = abstract_state(init_params, tx)
  return sharding.tree_shardings(boxed, mesh), nn.meta.unbox(boxed)


def init_train_state(init_params, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, rng: jax.Array,
                     params: Any = None) -> tuple[TrainState, TrainState]:
  """Builds the train state directly in its sharded layout.

  Args:
    init_params: rng -> boxed parameters (an objective's `init_params`).
    tx: the optimizer.
    mesh: device mesh.
    rng: init key (ignored when `params` is given).
    params: optional host arrays (pretrained weights) to start from, shaped like `init_params`' result.

  Returns:
    (state, shardings): the state at step 0 and the like tree of `NamedSharding`s.
  """
  init_boxed, _ = abstract_state(init_params, tx)
  shardings, shapes = state_shardings(init_params, tx, mesh)
  # No axis rules in scope here: out_shardings place the result, and flax's DenseGeneral would otherwise apply
  # its 4-D logical names to the 2-D kernel it initialises first.
  if params is None:
    state = jax.jit(lambda r: nn.meta.unbox(init_boxed(r)), out_shardings=shardings)(rng)
  else:
    params = put_params(params, shapes.params, shardings.params)
    state = jax.jit(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p)),
                    out_shardings=shardings)(params)
  return state, shardings


def put_params(params, shapes, shardings):
  """Host arrays -> sharded device arrays of the model's dtypes; names the first mismatched parameter."""
  flat_shapes, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  try:
    flat_params = treedef.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(f"The initial parameters do not have the model's structure: {e}") from None
  out = []
  for (path, shape), value, target in zip(flat_shapes, flat_params, treedef.flatten_up_to(shardings)):
    value = np.asarray(value)
    if value.shape != shape.shape:
      raise ValueError(f"Parameter {jax.tree_util.keystr(path)}: checkpoint shape {value.shape}, model shape "
                       f"{shape.shape}")
    value = value.astype(shape.dtype)
    # Every process holds the whole host array and contributes the slices its devices own.
    out.append(jax.make_array_from_callback(value.shape, target, lambda index, v=value: v[index]))
  return jax.tree_util.tree_unflatten(treedef, out)

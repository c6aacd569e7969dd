"""Optimisation: learning-rate schedule, AdamW with a decay mask, clipping, gradient accumulation.

The recipe is GPT-2's as nanoGPT reproduces it: linear warmup then cosine decay to a floor, AdamW with
(b1, b2) = (0.9, 0.95), weight decay on matrices and embeddings only, global-norm clipping at 1.0.

Typical use in the trainer::

  tx, schedule = make_optimizer(lr=6e-4, warmup_steps=2000, total_steps=600_000)
  ...
  loss, grads = accumulate_gradients(loss_fn, params, batch, num_microbatches, rng)
  updates, opt_state = tx.update(grads, opt_state, params)
  log(lr=schedule(step))
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.core import meta

PyTree = Any
# loss_fn(params, microbatch, rng) -> (sum of per-token losses, number of target tokens).
LossFn = Callable[[PyTree, PyTree, jax.Array], tuple[jax.Array, jax.Array]]


def lr_schedule(lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine decay to `lr * min_lr_ratio` at `total_steps`.

  Values: 0 at step 0, `lr` at `warmup_steps`, `lr * (1 + min_lr_ratio) / 2` half-way through the decay,
  `lr * min_lr_ratio` at `total_steps` and after.

  Args:
    lr: peak learning rate.
    warmup_steps: steps of linear warmup (0 starts the decay at once).
    total_steps: step at which the decay reaches its floor; counts the warmup.
    min_lr_ratio: the floor as a fraction of `lr`, in [0, 1].

  Returns:
    An optax schedule, step -> learning rate.
  """
  if lr < 0:
    raise ValueError(f"lr must be >= 0, got {lr}")
  if not 0 <= min_lr_ratio <= 1:
    raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
  if warmup_steps < 0 or total_steps <= warmup_steps:
    # optax would build a cosine of length <= 0 and fail far from the config that caused it.
    raise ValueError(
        f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, total_steps={total_steps}")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup_steps, decay_steps=total_steps,
      end_value=lr * min_lr_ratio)


def decay_mask(params: PyTree) -> PyTree:
  """Which parameters get weight decay: True for ndim >= 2 (kernels, embeddings), False otherwise.

  Biases and LayerNorm scales (ndim 1) are not decayed: shrinking them towards 0 only hurts (nanoGPT,
  transformers#11936). Keying on ndim rather than on names keeps the rule right for any module naming, with one
  exception: a leaf named `bias` is never decayed, whatever its shape (the model's `c_attn` bias is stored as
  [3, H, K] so that its heads axis can be sharded; it is still a bias).

  Args:
    params: a parameter tree of arrays or `jax.ShapeDtypeStruct`s; leaves may be boxed in
      `nn.LogicallyPartitioned` / `nn.Partitioned` (as `nn.with_logical_partitioning` creates them).

  Returns:
    A tree of bools. A boxed parameter maps to a plain bool in the box's place, which optax accepts as a
    prefix of the boxed tree (optax.masked maps the mask over the params with the mask first).
  """
  def leaf_mask(path, x):
    if path and getattr(path[-1], "key", None) == "bias":
      return False
    return jnp.ndim(meta.unbox(x)) >= 2 if meta.is_axis_metadata(x) else jnp.ndim(x) >= 2

  return jax.tree_util.tree_map_with_path(leaf_mask, params, is_leaf=meta.is_axis_metadata)


def make_optimizer(
    *,
    lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    grad_clip_norm: float | None = 1.0,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with the `lr_schedule`, `decay_mask` and global-norm gradient clipping.

  Args:
    lr, warmup_steps, total_steps, min_lr_ratio: see `lr_schedule`.
    weight_decay: decoupled weight decay, applied where `decay_mask` is True.
    b1, b2, eps: Adam moments; b2 = 0.95 (not 0.999) as in GPT-3/nanoGPT, steadier at large batch.
    grad_clip_norm: clip the global gradient norm to this; None or 0 disables clipping.

  Returns:
    (tx, schedule): the transformation, and the schedule so the trainer can log `schedule(step)`
    without digging the learning rate out of the optimizer state.
  """
  schedule = lr_schedule(lr, warmup_steps, total_steps, min_lr_ratio)
  adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
  if not grad_clip_norm:
    return adamw, schedule
  # Clip first so AdamW's moments never see the spike.
  return optax.chain(optax.clip_by_global_norm(grad_clip_norm), adamw), schedule


def accumulate_gradients(
    loss_fn: LossFn,
    params: PyTree,
    batch: PyTree,
    num_microbatches: int,
    rng: jax.Array,
) -> tuple[jax.Array, PyTree]:
  """Mean loss and its gradient over `batch`, computed in `num_microbatches` sequential pieces.

  Pure and jittable. Each microbatch's loss SUM, token count and gradient of the sum are added up, and the
  totals are divided by the TOTAL token count once at the end. Averaging per-microbatch means instead would
  weight tokens unequally whenever microbatches hold different numbers of target tokens (padding, masks),
  which is the bug of transformers#34191; this way the result equals the one-big-batch result.

  Args:
    loss_fn: `loss_fn(params, microbatch, rng) -> (loss_sum, num_tokens)`, both scalars.
    params: parameters to differentiate with respect to.
    batch: a tree of arrays sharing the leading (batch) axis, e.g. `{'tokens': int32[B, L+1]}` or an array.
    num_microbatches: how many pieces to split the batch axis into; must divide B.
    rng: PRNG key. With one microbatch it is passed to `loss_fn` unchanged; otherwise microbatch i gets
      `fold_in(rng, i)` so dropout masks differ between microbatches.

  Returns:
    (mean_loss, grads): `sum(loss_sum) / sum(num_tokens)` and its gradient, with grads shaped like params.
  """
  if num_microbatches < 1:
    raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
  sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
  if len(sizes) != 1:
    raise ValueError(f"all batch arrays must share the leading axis, got sizes {sorted(sizes)}")
  (batch_size,) = sizes
  if batch_size % num_microbatches:
    raise ValueError(
        f"batch size {batch_size} is not divisible by num_microbatches {num_microbatches}")

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num_microbatches == 1:
    (loss_sum, num_tokens), grads = grad_fn(params, batch, rng)
  else:
    micro = jax.tree.map(
        lambda x: x.reshape((num_microbatches, batch_size // num_microbatches) + x.shape[1:]), batch)

    def body(carry, xs):
      loss_acc, tokens_acc, grads_acc = carry
      index, microbatch = xs
      (loss_i, tokens_i), grads_i = grad_fn(params, microbatch, jax.random.fold_in(rng, index))
      grads_acc = jax.tree.map(jnp.add, grads_acc, grads_i)
      return (loss_acc + loss_i, tokens_acc + tokens_i, grads_acc), None

    # Accumulate in float32 whatever the param dtype: many small bf16 additions lose the low bits.
    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros)
    (loss_sum, num_tokens, grads), _ = jax.lax.scan(
        body, init, (jnp.arange(num_microbatches), micro))
    grads = jax.tree.map(lambda g, p: g.astype(jnp.result_type(p)), grads, params)

  # A batch with no target tokens (all masked) gives loss 0 and zero grads rather than NaN.
  denominator = jnp.maximum(jnp.asarray(num_tokens, jnp.float32), 1.0)
  return loss_sum / denominator, jax.tree.map(lambda g: g / denominator.astype(g.dtype), grads)

"""Tests for gptjax.optim: exact schedule values, the decayed-parameter list, accumulation == big batch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from gptjax import optim


def _gpt_like_params():
  f32 = jnp.float32
  return {
      "wte": {"embedding": jnp.ones((11, 4), f32)},
      "wpe": {"embedding": jnp.ones((8, 4), f32)},
      "h_0": {
          "ln_1": {"scale": jnp.ones((4,), f32), "bias": jnp.zeros((4,), f32)},
          "attn": {"c_attn": {"kernel": jnp.ones((4, 12), f32), "bias": jnp.zeros((12,), f32)}},
      },
      "ln_f": {"scale": jnp.ones((4,), f32), "bias": jnp.zeros((4,), f32)},
  }


def _paths(tree):
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=meta.is_axis_metadata)[0]
  return {"/".join(k.key for k in path) for path, leaf in leaves if leaf}


DECAYED = {"wte/embedding", "wpe/embedding", "h_0/attn/c_attn/kernel"}


def test_schedule_exact_values():
  schedule = optim.lr_schedule(lr=1e-3, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-6)   # half-way up the ramp
  np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)  # peak at the end of warmup
  # Cosine mid-point (step 60 = 10 + 100/2): lr * (min + (1 - min) * 0.5) = 1e-3 * 0.55.
  np.testing.assert_allclose(float(schedule(60)), 5.5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(110)), 1e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10_000)), 1e-4, rtol=1e-6)  # stays at the floor


@pytest.mark.parametrize("warmup, total", [(10, 10), (-1, 5), (20, 10)])
def test_schedule_rejects_bad_lengths(warmup, total):
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.lr_schedule(1e-3, warmup, total)


def test_decay_mask_lists_exactly_matrices_and_embeddings():
  assert _paths(optim.decay_mask(_gpt_like_params())) == DECAYED


def test_decay_mask_on_logically_partitioned_params():
  boxed = jax.tree.map(lambda x: nn.LogicallyPartitioned(x, ("embed",) * x.ndim), _gpt_like_params())
  mask = optim.decay_mask(boxed)
  assert _paths(mask) == DECAYED
  # And optax accepts it: one AdamW step decays only the masked leaves (zero grads isolate the decay).
  tx, _ = optim.make_optimizer(lr=1.0, warmup_steps=0, total_steps=10, weight_decay=0.5)
  state = tx.init(boxed)
  zero_grads = jax.tree.map(jnp.zeros_like, boxed)
  updates, _ = jax.jit(tx.update)(zero_grads, state, boxed)
  changed = jax.tree.map(lambda u: bool(jnp.any(u != 0)), meta.unbox(updates))
  assert _paths(changed) == DECAYED


def test_decay_mask_on_abstract_params():
  abstract = jax.eval_shape(_gpt_like_params)
  assert _paths(optim.decay_mask(abstract)) == DECAYED


def test_make_optimizer_clips_and_reports_schedule():
  tx, schedule = optim.make_optimizer(lr=1e-2, warmup_steps=2, total_steps=10)
  np.testing.assert_allclose(float(schedule(2)), 1e-2, rtol=1e-6)
  params = {"w": jnp.ones((2, 2))}
  state = tx.init(params)
  huge = {"w": jnp.full((2, 2), 1e6)}
  tiny = {"w": jnp.full((2, 2), 1e-3)}
  # After clipping both gradients point the same way; Adam's first step is sign-like, so updates agree.
  update = jax.jit(tx.update)
  u_huge, _ = update(huge, state, params)
  u_tiny, _ = update(tiny, state, params)
  np.testing.assert_allclose(u_huge["w"], u_tiny["w"], rtol=1e-5)
  # The optimizer state is the chain (clip, adamw); nothing about it hides the learning rate from us.
  assert isinstance(tx, optax.GradientTransformation)


def _masked_loss(params, batch, rng):
  """Sum of squared errors over unmasked positions of a linear model, and the number of such positions."""
  del rng
  pred = batch["x"] @ params["w"] + params["b"]  # [b, T]
  err = (pred - batch["y"]) ** 2 * batch["mask"]
  return err.sum(), batch["mask"].sum()


def _batch():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 3, 5), np.float32)
  y = rng.standard_normal((8, 3), np.float32)
  # Rows hold 3, 2, 1, 0, 3, 3, 1, 2 target tokens: microbatches of 2 rows hold 5, 1, 6, 3.
  lengths = np.array([3, 2, 1, 0, 3, 3, 1, 2])
  mask = (np.arange(3)[None, :] < lengths[:, None]).astype(np.float32)
  params = {"w": jnp.asarray(rng.standard_normal(5, np.float32)), "b": jnp.float32(0.3)}
  return params, {"x": jnp.asarray(x), "y": jnp.asarray(y), "mask": jnp.asarray(mask)}


@pytest.mark.parametrize("jit", [False, True])
def test_accumulation_equals_full_batch_with_uneven_token_counts(jit):
  params, batch = _batch()
  rng = jax.random.PRNGKey(1)

  def full(p):
    loss_sum, tokens = _masked_loss(p, batch, rng)
    return loss_sum / tokens

  want_loss, want_grads = jax.jit(jax.value_and_grad(full))(params)
  accumulate = optim.accumulate_gradients
  if jit:
    accumulate = jax.jit(accumulate, static_argnums=(0, 3))
  for n in (1, 4):
    loss, grads = accumulate(_masked_loss, params, batch, n, rng)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6, atol=1e-6)
    for key in params:
      np.testing.assert_allclose(grads[key], want_grads[key], rtol=1e-6, atol=1e-6)


def test_accumulation_differs_from_mean_of_means():
  # Guards the test above: with these uneven counts a naive mean of per-microbatch means is measurably off.
  params, batch = _batch()
  sums, counts = [], []
  for i in range(4):
    part = jax.tree.map(lambda x: x[2 * i:2 * i + 2], batch)
    s, c = _masked_loss(params, part, None)
    sums.append(s)
    counts.append(c)
  naive = np.mean([s / c for s, c in zip(sums, counts)])
  right, _ = optim.accumulate_gradients(_masked_loss, params, batch, 4, jax.random.PRNGKey(1))
  assert abs(naive - float(right)) > 1e-3


def test_accumulation_folds_rng_per_microbatch():
  def loss_fn(params, batch, rng):
    noise = jax.random.uniform(rng, ())
    return (params["w"] * batch).sum() * noise, jnp.float32(batch.size)

  params = {"w": jnp.float32(1.0)}
  batch = jnp.ones((4, 2))
  loss, _ = optim.accumulate_gradients(loss_fn, params, batch, 2, jax.random.PRNGKey(3))
  noise = [float(jax.random.uniform(jax.random.fold_in(jax.random.PRNGKey(3), i), ())) for i in range(2)]
  # Each microbatch sums 4 ones times its own noise; 8 tokens in all.
  np.testing.assert_allclose(loss, (4 * noise[0] + 4 * noise[1]) / 8, rtol=1e-6)


def test_accumulation_with_boxed_params():
  params, batch = _batch()
  boxed = jax.tree.map(lambda x: nn.LogicallyPartitioned(x, ("embed",) * x.ndim), params)

  def loss_fn(p, b, rng):
    return _masked_loss(meta.unbox(p), b, rng)

  loss_1, grads_1 = optim.accumulate_gradients(loss_fn, boxed, batch, 1, jax.random.PRNGKey(0))
  loss_4, grads_4 = optim.accumulate_gradients(loss_fn, boxed, batch, 4, jax.random.PRNGKey(0))
  np.testing.assert_allclose(loss_1, loss_4, rtol=1e-6)
  np.testing.assert_allclose(meta.unbox(grads_4)["w"], meta.unbox(grads_1)["w"], rtol=1e-6, atol=1e-6)


def test_indivisible_batch_names_both_numbers():
  params, batch = _batch()
  with pytest.raises(ValueError, match=r"batch size 8 .* num_microbatches 3"):
    optim.accumulate_gradients(_masked_loss, params, batch, 3, jax.random.PRNGKey(0))

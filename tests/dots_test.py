"""`gptjax/dots.py`: the layers' products keep XLA's forward and give the same gradients, and a GPT trained
through them gets PyTorch's gradients on the same weights."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import gptjax
from gptjax import dots, hf, model as model_lib
from gptjax.train import objectives
from tests import hf_reference

# (input shape, weight shape, dimension numbers): the model's layers and a product that is none of them.
FORMS = {
    "c_attn [B,L,D] x [D,3,H,K]": ((4, 6, 8), (8, 3, 2, 5), (((2,), (0,)), ((), ()))),
    "attn c_proj [B,L,H,K] x [H,K,D]": ((4, 6, 3, 5), (3, 5, 8), (((2, 3), (0, 1)), ((), ()))),
    "tied head [B,L,D] x [V,D]": ((4, 6, 8), (16, 8), (((2,), (1,)), ((), ()))),
    "mlp c_proj (narrower output)": ((4, 6, 16), (16, 8), (((2,), (0,)), ((), ()))),
    "mlp c_fc (wider output)": ((4, 6, 8), (8, 16), (((2,), (0,)), ((), ()))),
    "untransposed-weight head, narrower output": ((4, 6, 16), (8, 16), (((2,), (1,)), ((), ()))),
    "batched (XLA's own transpose)": ((3, 6, 8), (3, 8, 5), (((2,), (1,)), ((0,), (0,)))),
}


@pytest.mark.parametrize("form", FORMS.values(), ids=list(FORMS))
def test_forward_is_xlas_and_the_gradients_equal_xlas(form):
  lhs_shape, rhs_shape, numbers = form
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=lhs_shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=rhs_shape), jnp.float32)

  def loss(dot_general):
    return lambda x, w: jnp.sin(dot_general(x, w, numbers, preferred_element_type=jnp.float32)).sum()

  np.testing.assert_array_equal(jax.jit(dots.dot_general, static_argnums=2)(x, w, numbers),
                                jax.lax.dot_general(x, w, numbers))
  expected = jax.grad(loss(jax.lax.dot_general), (0, 1))(x, w)
  got = jax.jit(jax.grad(loss(dots.dot_general), (0, 1)))(x, w)
  for e, g in zip(expected, got):
    assert g.shape == e.shape and g.dtype == e.dtype
    np.testing.assert_allclose(g, e, atol=1e-5, rtol=1e-5)


def test_the_cpu_model_uses_them():
  assert dots.use_for_backend() and dots.layer_dot_general() is dots.dot_general


def test_the_training_gradient_equals_pytorchs_on_the_same_weights(tmp_path):
  reference = hf_reference.random_hf_model("gpt2", 97, 16, 2, 3, 24, seed=3)
  reference.save_pretrained(tmp_path)
  lm = gptjax.load(tmp_path)
  tokens = np.random.default_rng(1).integers(0, 97, size=(3, 17))

  def mean_loss(params):
    total, count = objectives.loss_fn(params, jnp.asarray(tokens), None, model=model_lib.GPT(lm.config),
                                      deterministic=True)
    return total / count

  ours = hf.params_to_state_dict(jax.jit(jax.grad(mean_loss))(lm.params), lm.config)
  reference.zero_grad()
  ids = torch.as_tensor(tokens, dtype=torch.long)
  logits = reference(ids[:, :-1]).logits
  torch.nn.functional.cross_entropy(logits.reshape(-1, 97), ids[:, 1:].reshape(-1)).backward()
  names = [name for name, _ in reference.named_parameters()]
  assert len(names) == len(ours)  # The tied head is the embedding: one tensor on both sides.
  for name, p in reference.named_parameters():
    np.testing.assert_allclose(ours[name], p.grad.numpy(), atol=2e-5, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("form", [f for name, f in FORMS.items() if "batched" not in name],
                         ids=[name for name in FORMS if "batched" not in name])
def test_weight_left_products_over_kernels_stored_transposed_equal_xlas(form):
  lhs_shape, rhs_shape, numbers = form
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(1, 1) + lhs_shape[2:]), jnp.float32)  # One row, as a decode step of one slot.
  w = jnp.asarray(rng.normal(size=rhs_shape), jnp.float32)
  name = ("c_proj", "kernel") if len(numbers[0][0]) == 2 else ("c_fc", "kernel")
  stored = dots.to_weight_left({name[0]: {name[1]: w}})

  @jax.jit
  def product(x, stored):
    return dots.weight_left_dot_general(x, dots.from_weight_left(stored)[name[0]][name[1]], numbers)

  k = len(numbers[0][0])
  if numbers[1][0] == tuple(range(k)):  # A layer's kernel: stored [F..., C...].
    assert stored[name[0]][name[1]].shape == w.shape[k:] + w.shape[:k]
  np.testing.assert_allclose(product(x, stored), jax.lax.dot_general(x, w, numbers), atol=1e-5, rtol=1e-5)


def test_the_weight_left_model_gives_the_usual_logits_and_round_trips_its_kernels():
  config = model_lib.gpt2_config("small", vocab_size=97, block_size=16, num_layers=2, num_heads=3, emb_dim=24,
                                 mlp_dim=40, tie_embeddings=False, dropout_rate=0.0, attention_dropout_rate=0.0)
  params = model_lib.init_params(config, jax.random.key(0))
  stored = dots.to_weight_left(params)
  jax.tree.map(np.testing.assert_array_equal, dots.from_weight_left(stored), params)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 97, size=(3, 5)))
  usual = model_lib.GPT(config).apply({"params": params}, tokens)
  weight_left = jax.jit(lambda p, t: model_lib.GPT(dataclasses.replace(config, weight_left=True)).apply(
      {"params": dots.from_weight_left(p)}, t))(stored, tokens)
  np.testing.assert_allclose(weight_left, usual, atol=1e-5, rtol=1e-5)


def test_cpu_compile_options_that_this_xla_lacks_are_left_out():
  # The oldest jaxlib the package allows has no YNNPACK option; an unknown option must not fail the program.
  double = dots.jit_with_cpu_options({"xla_no_such_option_here": "1"})(lambda x: 2 * x)
  assert float(double(jnp.float32(3))) == 6.0
  assert dots._xla_knows(tuple(dots.DECODE_CPU_COMPILER_OPTIONS.items()))  # pylint: disable=protected-access

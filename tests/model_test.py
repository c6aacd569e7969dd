"""The model alone: parameter counts, causality, padding, the decoding cache, modes."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import model as M
from tests import tiny_lm

# Three heads of width 8: an odd head count, so a head split along the wrong axis shows.
TINY = tiny_lm.model_config(block_size=16, num_heads=3, emb_dim=24, mlp_dim=96)
TINY_GPT1 = tiny_lm.model_config("gpt1", block_size=16, num_heads=3, emb_dim=24, mlp_dim=96)


def _count(config):
  return M.count_params(jax.eval_shape(lambda: M.init_params(config, jax.random.key(0))))


@pytest.mark.parametrize("config, expected", [
    (M.gpt2_config("small"), 124_439_808),
    (M.gpt2_config("medium"), 354_823_168),
    (M.gpt2_config("large"), 774_030_080),
    (M.gpt2_config("xl"), 1_557_611_200),
    (M.gpt1_config(), 116_534_784),
])
def test_parameter_counts_match_the_released_models(config, expected):
  assert _count(config) == expected


def test_every_parameter_has_logical_axis_names():
  boxed = jax.eval_shape(lambda: M.init_params(TINY, jax.random.key(0)))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim


def test_initialisation_follows_the_papers(tiny_params):
  config = dataclasses.replace(TINY, emb_dim=96, mlp_dim=384, num_heads=4, num_layers=8, vocab_size=500)
  params = tiny_params(config)
  assert np.std(params["wte"]["embedding"]) == pytest.approx(0.02, rel=0.05)
  assert np.std(params["h_0"]["mlp"]["c_fc"]["kernel"]) == pytest.approx(0.02, rel=0.05)
  # GPT-2 scales residual projections by 1/sqrt(2 * layers); GPT-1 does not.
  assert np.std(params["h_0"]["mlp"]["c_proj"]["kernel"]) == pytest.approx(0.02 / 4, rel=0.05)
  gpt1 = tiny_params(dataclasses.replace(config, **tiny_lm.GPT1_FIELDS))
  assert np.std(gpt1["h_0"]["attn"]["c_proj"]["kernel"]) == pytest.approx(0.02, rel=0.05)
  assert "ln_f" not in gpt1
  np.testing.assert_array_equal(params["h_0"]["ln_1"]["scale"], 1.0)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "no_jit"])
@pytest.mark.parametrize("config", [TINY, TINY_GPT1], ids=["gpt2", "gpt1"])
def test_no_position_sees_the_future(tiny_params, config, jit):
  """The gradient of position t's logits reaches the position embeddings of 0..t and no later one."""
  tokens = jax.random.randint(jax.random.key(1), (1, 10), 0, config.vocab_size)

  def grad_wpe(params, t):
    f = lambda p: M.GPT(config).apply({"params": p}, tokens)[0, t].sum()
    return jax.grad(f)(params)["wpe"]["embedding"]

  grad_wpe = jax.jit(grad_wpe) if jit else grad_wpe  # Jitted, t is traced: the mask must not depend on its value.
  for t in (0, 4, 9):
    row_norms = np.abs(np.asarray(grad_wpe(tiny_params(config), t))).sum(axis=-1)
    assert np.all(row_norms[: t + 1] > 0), (t, row_norms)
    np.testing.assert_array_equal(row_norms[t + 1:], 0.0)


@pytest.mark.parametrize("config", [TINY, TINY_GPT1], ids=["gpt2", "gpt1"])
def test_left_padding_does_not_change_real_positions(tiny_params, config):
  params = tiny_params(config)
  model = M.GPT(config)
  row = jax.random.randint(jax.random.key(2), (1, 6), 0, config.vocab_size)
  alone = model.apply({"params": params}, row)
  padded = jnp.concatenate([jnp.full((1, 4), 7), row], axis=1)
  mask = jnp.concatenate([jnp.zeros((1, 4), bool), jnp.ones((1, 6), bool)], axis=1)
  together = model.apply({"params": params}, padded, attention_mask_BL=mask)
  np.testing.assert_allclose(together[:, 4:], alone, atol=1e-5)


@pytest.mark.parametrize("config", [TINY, TINY_GPT1], ids=["gpt2", "gpt1"])
def test_cached_decoding_equals_full_forward_at_every_step(tiny_params, config):
  """Prefill a ragged (left-padded) batch, then feed one token per call: logits equal one full pass."""
  params = tiny_params(config)
  batch, prompt_len, total = 3, 5, 12
  tokens = jax.random.randint(jax.random.key(3), (batch, total), 0, config.vocab_size)
  mask = jnp.ones((batch, total), bool).at[1, :2].set(False).at[2, :4].set(False)
  full = M.GPT(config).apply({"params": params}, tokens, attention_mask_BL=mask)

  decoder = M.GPT(dataclasses.replace(config, decode=True))
  step = jax.jit(lambda cache, toks, m: decoder.apply({"params": params, "cache": cache}, toks,
                                                      attention_mask_BL=m, mutable=["cache"]))
  cache = M.init_cache(config, batch, total)
  logits, variables = step(cache, tokens[:, :prompt_len], mask[:, :prompt_len])
  outputs = [logits]
  for t in range(prompt_len, total):
    logits, variables = step(variables["cache"], tokens[:, t:t + 1], mask[:, t:t + 1])
    outputs.append(logits)
  cached = jnp.concatenate(outputs, axis=1)
  np.testing.assert_allclose(np.where(mask[..., None], cached, 0), np.where(mask[..., None], full, 0), atol=1e-5)


def test_cache_longer_than_context_is_rejected():
  with pytest.raises(ValueError, match="max_length=17 exceeds .* block_size=16"):
    M.init_cache(TINY, 1, 17)


def test_dropout_only_in_training_mode(tiny_params):
  config = dataclasses.replace(TINY, dropout_rate=0.3, attention_dropout_rate=0.3)
  params = tiny_params(TINY)  # Dropout has no parameters.
  tokens = jnp.arange(8)[None] % config.vocab_size
  model = M.GPT(config)
  eval_a = model.apply({"params": params}, tokens)
  eval_b = M.GPT(TINY).apply({"params": params}, tokens)
  np.testing.assert_allclose(eval_a, eval_b, atol=1e-6)
  train = model.apply({"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(0)})
  assert np.abs(train - eval_a).max() > 1e-3


def test_remat_gives_the_same_gradients(tiny_params):
  params = tiny_params(TINY)
  tokens = jnp.arange(12)[None] % TINY.vocab_size
  loss = lambda cfg: lambda p: M.GPT(cfg).apply({"params": p}, tokens).mean()
  remat_cfg = dataclasses.replace(TINY, remat=True)
  chex.assert_trees_all_close(jax.grad(loss(remat_cfg))(params), jax.grad(loss(TINY))(params), atol=1e-6)


@pytest.mark.parametrize("config", [TINY, TINY_GPT1], ids=["gpt2", "gpt1"])
def test_bf16_compute_stays_within_bf16_rounding_of_f32(config):
  """bfloat16 matmuls (8 significant bits) move logits by about 1% of their spread, and by no more than 10%.

  On weights drawn 8x wider than GPT-2's init the logits spread ~0.8 (an initialised model's spread ~0.1 would
  hide errors ten times larger); a bf16 path that skips a LayerNorm or the attention scale is off by ~200%.
  """
  params = tiny_lm.random_lm(config, scale=8.0).params
  tokens = (jnp.arange(16)[None] * 7) % config.vocab_size
  f32 = np.asarray(M.GPT(config).apply({"params": params}, tokens))
  bf16 = M.GPT(dataclasses.replace(config, dtype="bfloat16")).apply({"params": params}, tokens)
  assert bf16.dtype == jnp.float32  # Logits leave the model in float32 whatever the compute dtype.
  error, spread = np.abs(np.asarray(bf16) - f32).max(), f32.std()
  assert spread > 0.5, spread
  assert 1e-4 * spread < error < 0.1 * spread, (error, spread)  # Rounded (bf16 did run), and only rounded.


def test_attention_weights_can_be_probed(tiny_params):
  params = tiny_params(TINY)
  tokens = jnp.arange(7)[None]
  _, state = M.GPT(TINY).apply({"params": params}, tokens, mutable=["intermediates"])
  (weights,) = state["intermediates"]["h_1"]["attn"]["attention_weights"]
  assert weights.shape == (1, TINY.num_heads, 7, 7)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(np.triu(np.asarray(weights[0, 0]), k=1), 0.0)


@pytest.mark.parametrize("field, value, message", [
    ("emb_dim", 25, "divisible by num_heads=3"),
    ("norm", "middle", "norm must be one of"),
    ("activation", "tanh", "activation must be one of"),
    ("num_layers", 0, "num_layers must be a positive integer"),
    ("dtype", "float64", "dtype must be one of"),
    ("dropout_rate", 1.5, r"dropout_rate must be in \[0, 1\)"),
    ("attention_impl", "flash", "attention_impl must be one of"),
])
def test_bad_config_values_are_named(field, value, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(TINY, **{field: value})


def test_from_dict_rejects_unknown_fields():
  with pytest.raises(ValueError, match=r"Unknown ModelConfig field\(s\) \['num_layer'\]"):
    M.ModelConfig.from_dict({"num_layer": 2})
  assert M.ModelConfig.from_dict(TINY.to_dict()) == TINY


# 1 and 65 rows: the usual matmul; 2 rows: the vocab-major one that decode steps of a few slots use.
@pytest.mark.parametrize("rows", [1, 2, 65])
@pytest.mark.parametrize("config", [TINY, dataclasses.replace(TINY_GPT1, tie_embeddings=False)], ids=["tied", "untied"])
def test_last_only_gives_the_last_positions_logits(tiny_params, config, rows):
  params = tiny_params(config)
  tokens = jax.random.randint(jax.random.key(5), (rows, 9), 0, config.vocab_size)
  full = M.GPT(config).apply({"params": params}, tokens)
  last = M.GPT(config).apply({"params": params}, tokens, last_only=True)
  assert last.shape == (rows, 1, config.vocab_size)
  np.testing.assert_allclose(last, full[:, -1:], atol=1e-6)


@pytest.mark.parametrize("mask", [False, True], ids=["causal", "padded"])
def test_einsum_attention_equals_jax_dot_product_attention(tiny_params, mask):
  """The CPU default (our masked softmax) and jax.nn.dot_product_attention give the same logits and gradients."""
  params = tiny_params(TINY)
  tokens = jax.random.randint(jax.random.key(6), (2, 9), 0, TINY.vocab_size)
  attention_mask = jnp.ones((2, 9), bool).at[1, :3].set(False) if mask else None
  def loss(p, impl):
    logits = M.GPT(dataclasses.replace(TINY, attention_impl=impl)).apply(
        {"params": p}, tokens, attention_mask_BL=attention_mask)
    return jnp.where(attention_mask[..., None], logits, 0).sum() if mask else logits.sum()
  ours, reference = (jax.value_and_grad(loss)(params, impl) for impl in ("einsum", "xla"))
  chex.assert_trees_all_close(ours, reference, atol=1e-4, rtol=1e-5)

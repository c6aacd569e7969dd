"""Tiny models for the tests: the shared tiny ModelConfig, and LanguageModels with random weights for decoding."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import gptjax
from gptjax import model as M

# GPT-1's architecture differs from GPT-2's in these fields only (`gptjax.model.gpt1_config`).
GPT1_FIELDS = dict(norm="post", final_norm=False, scale_residual_init=False)


def model_config(arch: str = "gpt2", **overrides) -> M.ModelConfig:
  """The tests' tiny ModelConfig: 2 layers, 2 heads, width 16, MLP 64, vocabulary 61, context 32, no dropout.

  Args:
    arch: 'gpt2' (pre-LN, final LayerNorm) or 'gpt1' (post-LN, none).
    **overrides: ModelConfig fields that differ, so each test states only what it depends on.
  """
  if arch not in ("gpt2", "gpt1"):
    raise ValueError(f"arch must be 'gpt2' or 'gpt1', got {arch!r}")
  base = dict(vocab_size=61, block_size=32, num_layers=2, num_heads=2, emb_dim=16, mlp_dim=64, dropout_rate=0.0,
              attention_dropout_rate=0.0, **(GPT1_FIELDS if arch == "gpt1" else {}))
  return M.ModelConfig(**{**base, **overrides})


TINY = model_config()
# Text with characters that byte-level BPE splits over several tokens.
CORPUS = ["Hello world! Stream me: emoji 😀👍🏽 and 日本語のテキスト, 中文字符, Ångström."] * 8
# The sampling strategy most text-model tests share (one compiled program per batch size).
SAMPLE = dict(temperature=1.5, top_k=50)


def random_lm(config=TINY, tokenizer=None, seed=0, scale=1.0) -> gptjax.LanguageModel:
  """A LanguageModel with random weights drawn in numpy (an eager Flax init would compile dozens of small ops).

  `scale` > 1 gives sharper distributions than GPT-2's 0.02 init, so greedy paths vary and margins are not ties.
  """
  shapes = jax.eval_shape(lambda: nn.meta.unbox(M.init_params(config, jax.random.key(0))))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    return jnp.asarray(1.0 + 0.1 * noise if "scale" in jax.tree_util.keystr(path) else 0.02 * scale * noise)

  return gptjax.LanguageModel(config, jax.tree_util.tree_map_with_path(draw, shapes), tokenizer)


def text_lm(tokenizer) -> gptjax.LanguageModel:
  """A one-layer model for `tokenizer` whose embedding has 20 more rows than the tokenizer has tokens, as nanoGPT
  pads GPT-2's: those ids must never be sampled.

  Tests on it keep to a few shapes (prompts <= 8 tokens, 12-16 new tokens, batches of 1 or 4) and strategies, so
  that they share compiled programs: compiling is most of their time.
  """
  config = dataclasses.replace(TINY, vocab_size=tokenizer.vocab_size + 20, block_size=64, num_layers=1)
  return random_lm(config, tokenizer, scale=8.0)

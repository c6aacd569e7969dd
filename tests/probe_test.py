"""Probing: top-k next tokens and attention maps agree with the model's own outputs."""


import numpy as np
import pytest

import gptjax
from gptjax import probe
from gptjax.tokenizer import char_tokenizer

@pytest.fixture(scope="module")
def lm(tiny_model_config, tiny_params):
  tokenizer = char_tokenizer("abcdefghijklmnopqrstuvwxyz .,")
  config = tiny_model_config(vocab_size=tokenizer.vocab_size, block_size=16, mlp_dim=32)
  return gptjax.LanguageModel(config, tiny_params(config), tokenizer)


def test_top_next_tokens_are_the_largest_logits_in_order(lm):
  logits = lm.logits(lm.tokenizer.encode("hello wor"))[0, -1]
  top = probe.top_next_tokens(lm, "hello wor", k=5)
  assert [t.token_id for t in top] == list(np.argsort(-logits)[:5])
  probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  np.testing.assert_allclose([t.probability for t in top], probs[[t.token_id for t in top]], rtol=1e-5)
  assert [t.text for t in top] == [lm.tokenizer.decode([t.token_id]) for t in top]
  assert all(a.probability >= b.probability for a, b in zip(top, top[1:]))


def test_attention_maps_are_causal_distributions(lm):
  maps = probe.attention_maps(lm, "abc de")
  assert maps.shape == (2, 2, 6, 6)
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(maps[..., np.triu_indices(6, k=1)[0], np.triu_indices(6, k=1)[1]], 0.0)
  # The first query can only attend to itself.
  np.testing.assert_allclose(maps[:, :, 0, 0], 1.0, atol=1e-6)


def test_bad_probe_inputs(lm):
  with pytest.raises(ValueError, match="k must be in"):
    probe.top_next_tokens(lm, "abc", k=0)
  with pytest.raises(ValueError, match="Empty input"):
    probe.top_next_tokens(lm, "")
  with pytest.raises(ValueError, match="exceed the model's context block_size=16"):
    probe.attention_maps(lm, "a" * 17)

"""The decoding loop: strategies against Hugging Face's processors and their distributions, the loop on models of
known behaviour, cached logits against full forward passes, greedy decoding against HF `generate`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
import transformers
from transformers.generation import logits_process

import gptjax
from gptjax import model as M
from gptjax.inference import sampling as S
from tiny_lm import TINY, random_lm

# GPT-1's post-LN blocks, here with an untied output head too (the head is computed in sampling.py).
TINY_GPT1_UNTIED = dataclasses.replace(TINY, norm="post", final_norm=False, scale_residual_init=False,
                                       tie_embeddings=False)


# ----- Strategies: the same maths as Hugging Face's processors. ------------------------------------------------------


def _hf_filtered(warper, logits):
  return warper(torch.zeros((logits.shape[0], 1), dtype=torch.long), torch.tensor(logits)).numpy()


_filter = jax.jit(S.filter_top_k_top_p)


@pytest.mark.parametrize("top_k, top_p", [(1, None), (5, None), (None, 0.01), (None, 0.5), (None, 0.9), (7, 0.8),
                                          (40, None), (None, 1.0)])
def test_top_k_top_p_keep_the_same_tokens_as_hugging_face(top_k, top_p):
  logits = np.random.default_rng(0).normal(size=(16, 40)).astype(np.float32) * 2
  expected = logits
  if top_k is not None:
    expected = _hf_filtered(logits_process.TopKLogitsWarper(top_k), expected)
  if top_p is not None:
    expected = _hf_filtered(logits_process.TopPLogitsWarper(top_p), expected)
  ours = np.asarray(_filter(jnp.asarray(logits), top_k, top_p))
  np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(expected))
  np.testing.assert_array_equal(ours[np.isfinite(ours)], logits[np.isfinite(ours)])


def test_repetition_penalty_equals_hugging_face():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 20)).astype(np.float32)
  context = rng.integers(0, 20, size=(3, 9))
  expected = logits_process.RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor(context), torch.tensor(logits))
  ours = S.apply_repetition_penalty(jnp.asarray(logits), jnp.asarray(context), jnp.ones((3, 9), bool), 1.7)
  np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6)
  # Invalid (padding) slots are not penalised.
  valid = np.ones((3, 9), bool)
  valid[0] = False
  ours = S.apply_repetition_penalty(jnp.asarray(logits), jnp.asarray(context), jnp.asarray(valid), 1.7)
  np.testing.assert_array_equal(ours[0], logits[0])


# ----- The loop with hand-written models of known behaviour. ---------------------------------------------------------


def _fixed_logits(logits_V, tokens_BL, mask_BL, cache):
  """A 'model' whose next-token distribution is always softmax(logits_V): every step is an independent draw."""
  return jnp.broadcast_to(logits_V, (tokens_BL.shape[0], logits_V.shape[0])), cache


def _counting(vocab_V, tokens_BL, mask_BL, cache):
  """A 'model' that surely predicts (last token + 1) mod V."""
  V = vocab_V.shape[0]
  return 20.0 * jax.nn.one_hot((tokens_BL[:, -1] + 1) % V, V), cache


def _truncated_softmax(logits, temperature, top_k, top_p):
  """The distribution the issue asks for, written out from the definitions."""
  logits = np.asarray(logits, np.float64)
  probs = np.exp(logits / temperature - np.max(logits / temperature))
  order = np.argsort(-logits, kind="stable")
  keep = np.zeros(len(logits), bool)
  keep[order[:top_k or len(logits)]] = True
  probs = np.where(keep, probs, 0) / np.where(keep, probs, 0).sum()
  if top_p < 1:
    mass = 0.0
    nucleus = np.zeros(len(logits), bool)
    for i in order:
      if keep[i] and mass < top_p:
        nucleus[i] = True
        mass += probs[i]
    probs = np.where(nucleus, probs, 0) / np.where(nucleus, probs, 0).sum()
  return probs


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 3, 1.0), (1.0, 0, 0.7), (2.0, 6, 0.8)])
def test_sample_frequencies_match_the_truncated_softmax(temperature, top_k, top_p):
  logits = np.log(np.array([0.3, 0.2, 0.15, 0.12, 0.1, 0.07, 0.04, 0.02], np.float32))
  batch, steps = 1000, 8
  prompt = np.zeros((batch, 1), np.int32)
  keys = jax.random.split(jax.random.key(0), batch)
  result = S.decode(_fixed_logits, jnp.asarray(logits), jnp.zeros(()), prompt, prompt >= 0, keys, steps,
                    S.SamplingParams(temperature, top_k, top_p))
  counts = np.bincount(result.tokens_BN.ravel(), minlength=8)
  expected = _truncated_softmax(logits, temperature, top_k, top_p)
  assert counts[expected == 0].sum() == 0, (counts, expected)
  kept = expected > 0
  _, p_value = scipy.stats.chisquare(counts[kept], expected[kept] * counts.sum())
  assert p_value > 1e-3, (counts, expected)
  # The test has power: the untruncated temperature-1 softmax is rejected.
  wrong = _truncated_softmax(logits, 1.0, 0, 1.0)
  _, p_wrong = scipy.stats.chisquare(counts, wrong * counts.sum())
  assert p_wrong < 1e-6


def test_stop_sequences_end_each_row_on_its_own():
  V = 16
  prompt = np.array([[0, 0], [0, 3], [0, 7], [0, 4]], np.int32)
  mask = np.array([[False, True]] * 4)
  stops = S.stop_array([[[4, 5]], [], [[9], [12, 13]], [[4, 5]]])
  result = S.decode(_counting, jnp.zeros(V), jnp.zeros(()), prompt, mask, jax.random.split(jax.random.key(0), 4),
                    6, S.SamplingParams(temperature=0), stops)
  rows = [result.tokens_BN[b, :n].tolist() for b, n in enumerate(result.num_tokens_B)]
  assert rows == [[1, 2, 3, 4, 5], [4, 5, 6, 7, 8, 9], [8, 9], [5, 6, 7, 8, 9, 10]]
  # Row 3's prompt ends in 4: a stop sequence counts only inside the generated tokens.
  assert result.stopped_B.tolist() == [True, False, True, False]


def test_stream_steps_equal_the_one_program_loop():
  logits = jnp.log(jnp.arange(1, 9, dtype=jnp.float32))
  prompt = np.zeros((3, 2), np.int32)
  keys = jax.random.split(jax.random.key(5), 3)
  stops = S.stop_array([[[7]], [[7]], [[7]]])
  whole = S.decode(_fixed_logits, logits, jnp.zeros(()), prompt, prompt >= 0, keys, 12, S.SamplingParams(), stops)
  steps = list(S.decode_stream(_fixed_logits, logits, jnp.zeros(()), prompt, prompt >= 0, keys, 12,
                               S.SamplingParams(), stops))
  tokens = np.stack([t for t, _, _ in steps], axis=1)
  live = np.stack([l for _, l, _ in steps], axis=1)
  for b in range(3):
    n = whole.num_tokens_B[b]
    assert live[b].sum() == n
    np.testing.assert_array_equal(tokens[b, :n], whole.tokens_BN[b, :n])
  assert len(steps) == whole.num_tokens_B.max()


# ----- The loop with the real model. ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY, TINY_GPT1_UNTIED], ids=["gpt2", "gpt1_untied_head"])
def test_cached_logits_equal_full_forward_logits_at_every_step(config):
  lm = random_lm(config, scale=4.0)
  lengths, P, N = [2, 5, 8], 8, 8
  rng = np.random.default_rng(0)
  prompt = np.zeros((3, P), np.int32)
  mask = np.zeros((3, P), bool)
  for b, n in enumerate(lengths):
    prompt[b, P - n:] = rng.integers(0, config.vocab_size, n)
    mask[b, P - n:] = True
  keys = jax.random.split(jax.random.key(1), 3)
  result = S.decode(S.model_tokens_to_logits(config), lm.params, M.init_cache(config, 3, 24), prompt, mask, keys,
                    N, S.SamplingParams(temperature=1.0), buffer_length=16, record_logits=True)
  assert result.num_tokens_B.tolist() == [N] * 3
  tokens = np.concatenate([prompt, result.tokens_BN[:, :N]], axis=1)
  full = lm.logits(tokens, np.concatenate([mask, np.ones((3, N), bool)], axis=1))
  np.testing.assert_allclose(result.logits_BNV[:, :N], full[:, P - 1:P + N - 1], atol=2e-5, rtol=0)


def _hf_gpt2(vocab=61, context=32, seed=0):
  torch.manual_seed(seed)
  config = transformers.GPT2Config(vocab_size=vocab, n_positions=context, n_layer=2, n_head=2, n_embd=16)
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  return model


def _hf_generate(model, prompts, max_new_tokens, **kwargs):
  P = max(len(p) for p in prompts)
  ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                         min_new_tokens=max_new_tokens, pad_token_id=0, eos_token_id=None, **kwargs)
  return out[:, P:].tolist()


def test_greedy_equals_hugging_face_generate_on_a_ragged_batch(tmp_path):
  model = _hf_gpt2()
  model.save_pretrained(tmp_path)
  lm = gptjax.load(tmp_path)
  rng = np.random.default_rng(3)
  prompts = [rng.integers(1, 61, n).tolist() for n in (3, 9, 1, 6)]
  ours = lm.generate(prompts, 10, temperature=0)
  assert ours == _hf_generate(model, prompts, 10)
  assert len({tuple(r) for r in ours}) == 4  # Not a degenerate model that repeats one token everywhere.
  # HF's penalty also counts pad tokens, so compare it on prompts of one length.
  same_length = [rng.integers(1, 61, 5).tolist() for _ in range(3)]
  assert (lm.generate(same_length, 10, temperature=0, repetition_penalty=1.8)
          == _hf_generate(model, same_length, 10, repetition_penalty=1.8))


def test_greedy_gpt1_equals_hugging_face_generate(tmp_path):
  torch.manual_seed(0)
  config = transformers.OpenAIGPTConfig(vocab_size=61, n_positions=32, n_layer=2, n_head=2, n_embd=16)
  model = transformers.OpenAIGPTLMHeadModel(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  model.save_pretrained(tmp_path)
  lm = gptjax.load(tmp_path)
  for prompt in ([5, 17, 3], [44]):
    assert lm.generate([prompt], 8, temperature=0) == _hf_generate(model, [prompt], 8)

"""Choosing tokens: per-row strategies against Hugging Face's processors, OpenAI's penalties and the distributions
they define; the engine's cached decoding against full forward passes; greedy decoding against HF `generate`."""

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
from gptjax.inference import engine as E
from gptjax.inference import sampling as S
from tests.tiny_lm import TINY, random_lm

# GPT-1's post-LN blocks, here with an untied output head too.
TINY_GPT1_UNTIED = dataclasses.replace(TINY, norm="post", final_norm=False, scale_residual_init=False,
                                       tie_embeddings=False)


# ----- Strategies: the same maths as Hugging Face's processors, each row with its own settings. ----------------------


def _hf_filtered(warper, logits):
  return warper(torch.zeros((logits.shape[0], 1), dtype=torch.long), torch.tensor(logits)).numpy()


_SETTINGS = [(1, None), (5, None), (None, 0.01), (None, 0.5), (None, 0.9), (7, 0.8), (40, None), (None, 1.0),
             (None, None)]


def test_top_k_top_p_keep_the_same_tokens_as_hugging_face_row_by_row():
  logits = np.random.default_rng(0).normal(size=(len(_SETTINGS), 40)).astype(np.float32) * 2
  top_k = np.array([k or 0 for k, _ in _SETTINGS], np.int32)  # 0 = off.
  top_p = np.array([1.0 if p is None else p for _, p in _SETTINGS], np.float32)  # 1 = off.
  ours = np.asarray(jax.jit(S.filter_per_row)(jnp.asarray(logits), top_k, top_p))
  for row, (k, p) in enumerate(_SETTINGS):
    expected = logits[row:row + 1]
    if k is not None:
      expected = _hf_filtered(logits_process.TopKLogitsWarper(k), expected)
    if p is not None:
      expected = _hf_filtered(logits_process.TopPLogitsWarper(p), expected)
    np.testing.assert_array_equal(np.isfinite(ours[row]), np.isfinite(expected[0]), err_msg=str((k, p)))
    np.testing.assert_array_equal(ours[row][np.isfinite(ours[row])], logits[row][np.isfinite(ours[row])])
  np.testing.assert_array_equal(ours[-1], logits[-1])  # Both off: the row is untouched.


def test_penalties_equal_hugging_face_and_openai_row_by_row():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 20)).astype(np.float32)
  context = rng.integers(0, 20, size=(3, 9))
  seen = np.zeros((3, 20), bool)
  np.put_along_axis(seen, context, True, axis=1)
  counts = rng.integers(0, 3, size=(3, 20))
  repetition, presence, frequency = np.array([1.7, 1.0, 1.0]), np.array([0.0, 0.5, 0.0]), np.array([0.0, 0.0, 0.8])
  ours = np.asarray(S.apply_penalties_per_row(jnp.asarray(logits), seen, counts, repetition.astype(np.float32),
                                              presence.astype(np.float32), frequency.astype(np.float32)))
  hf = logits_process.RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor(context[:1]), torch.tensor(logits[:1]))
  np.testing.assert_allclose(ours[0], hf.numpy()[0], rtol=1e-6)
  np.testing.assert_allclose(ours[1], logits[1] - 0.5 * (counts[1] > 0), rtol=1e-6)  # OpenAI's presence penalty.
  np.testing.assert_allclose(ours[2], logits[2] - 0.8 * counts[2], rtol=1e-6)  # And frequency penalty.
  off = S.apply_penalties_per_row(jnp.asarray(logits), seen, counts, np.ones(3, np.float32), np.zeros(3, np.float32),
                                  np.zeros(3, np.float32))
  np.testing.assert_array_equal(off, logits)


# ----- Draws: the distributions the settings define. -------------------------------------------------------------


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
  draws = 8000
  # Half the rows are greedy: they must not change the other rows' distribution.
  temperature_B = np.where(np.arange(draws) % 2 == 0, temperature, 0.0).astype(np.float32)
  keys = jax.random.split(jax.random.key(0), draws)
  tokens = np.asarray(jax.jit(S.choose_tokens_per_row)(
      keys, jnp.broadcast_to(jnp.asarray(logits), (draws, 8)), temperature_B, np.full(draws, top_k, np.int32),
      np.full(draws, top_p, np.float32)))
  assert np.all(tokens[1::2] == 0)
  counts = np.bincount(tokens[0::2], minlength=8)
  expected = _truncated_softmax(logits, temperature, top_k, top_p)
  assert counts[expected == 0].sum() == 0, (counts, expected)
  kept = expected > 0
  _, p_value = scipy.stats.chisquare(counts[kept], expected[kept] * counts.sum())
  assert p_value > 1e-3, (counts, expected)
  # The test has power: the untruncated temperature-1 softmax is rejected.
  wrong = _truncated_softmax(logits, 1.0, 0, 1.0)
  _, p_wrong = scipy.stats.chisquare(counts, wrong * counts.sum())
  assert p_wrong < 1e-6


def test_stop_sequences_match_only_complete_generated_sequences():
  stops = np.stack([S.stop_sequences_array([(4, 5)]), S.stop_sequences_array([]),
                    S.stop_sequences_array([(9,), (12, 13)])])
  window = np.full((3, S.MAX_STOP_LENGTH), -1, np.int32)
  window[:, -2:] = [[4, 5], [4, 5], [12, 9]]
  assert np.asarray(S.ends_with_stop(window, stops)).tolist() == [True, False, True]
  window[:, -2:] = [[-1, 5], [0, 0], [13, 12]]
  assert np.asarray(S.ends_with_stop(window, stops)).tolist() == [False, False, False]


# ----- The engine's decoding with the real model. ----------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY, TINY_GPT1_UNTIED], ids=["gpt2", "gpt1_untied_head"])
def test_cached_logits_equal_full_forward_logits_at_every_step(config):
  lm = random_lm(config, scale=4.0)
  engine = E.Engine(lm, num_slots=4, max_length=24)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in (2, 5, 8)]
  scheduler = E.Scheduler(engine)
  for i, prompt in enumerate(prompts):
    scheduler.submit(i, prompt, S.SamplingSettings(temperature=1.0, seed=i, max_tokens=8, logprobs=S.MAX_TOP_LOGPROBS))
  events = {i: [] for i in range(3)}
  while scheduler.has_work():
    for event in scheduler.step():
      events[event.request_id].append(event)
  for i, prompt in enumerate(prompts):
    assert len(events[i]) == 8
    full = np.asarray(jax.nn.log_softmax(lm.logits(prompt + [e.token_id for e in events[i]])[0], axis=-1))
    for step, event in enumerate(events[i]):
      row = full[len(prompt) - 1 + step]
      ids = [t for t, _ in event.top_logprobs]
      np.testing.assert_allclose([v for _, v in event.top_logprobs], row[ids], atol=2e-5)
      np.testing.assert_allclose(event.logprob, row[event.token_id], atol=2e-5)


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


def test_greedy_is_argmax_with_its_ties_infinities_and_nans():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 300)).astype(np.float32)
  logits[1, [7, 100]] = 50.0  # A tie: the lower id.
  logits[2, :] = -np.inf  # Nothing allowed: id 0, as argmax.
  logits[3, [9, 20]] = np.nan  # NaNs: the first, as argmax.
  logits[4, 299] = np.inf
  logits[5, :] = 3.0  # All tied.
  np.testing.assert_array_equal(S.greedy(jnp.asarray(logits)), np.argmax(logits, axis=-1))
  assert S.greedy(jnp.asarray(logits)).dtype == jnp.int32

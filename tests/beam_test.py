"""Beam search, n-gram blocking and min_new_tokens (gptjax/inference/beam.py) against Hugging Face `generate` on the
same weights, GPT-2 and GPT-1, on a ragged batch."""

import numpy as np
import pytest
import torch

import gptjax
from tests.hf_reference import random_hf_model

N = 12  # New tokens per prompt.


@pytest.fixture(scope="module", params=["gpt2", "openai-gpt"])
def models(request, tmp_path_factory):
  ref = random_hf_model(request.param, 97, 64, 2, 3, 24)
  path = tmp_path_factory.mktemp(request.param)
  ref.save_pretrained(path)
  return ref, gptjax.load(path)


def _prompts():
  rng = np.random.default_rng(0)
  return [[int(t) for t in rng.integers(0, 97, n)] for n in (5, 3, 7)]


def _hf(ref, prompts, eos, **options):
  """HF generate on left-padded prompts; each row's new tokens up to (not including) eos."""
  P = max(len(p) for p in prompts)
  ids = np.zeros((len(prompts), P), np.int64)
  mask = np.zeros_like(ids)
  for i, p in enumerate(prompts):
    ids[i, P - len(p):], mask[i, P - len(p):] = p, 1
  with torch.no_grad():
    out = ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=N, eos_token_id=eos,
                       pad_token_id=eos, do_sample=False, **options).numpy()
  rows = [[int(t) for t in row[P:]] for row in out]
  return [row[:row.index(eos)] if eos in row else row for row in rows]


def _eos(lm, prompts):
  # A token greedy decoding produces, so that some beams finish early and the finished-hypothesis logic is exercised.
  return lm.generate(prompts, N, temperature=0, stop_at_eos=False)[0][4]


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping,num_return", [
    (4, 1.0, True, 2), (4, 0.0, False, 4), (3, 2.0, False, 1), (4, -1.0, True, 1), (2, 1.0, "never", 2)])
def test_beam_search_equals_hugging_face(models, num_beams, length_penalty, early_stopping, num_return):
  ref, lm = models
  prompts = _prompts()
  eos = _eos(lm, prompts)
  ours = lm.generate(prompts, N, num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                     num_return_sequences=num_return, stop=[[eos]])
  theirs = _hf(ref, prompts, eos, num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
               num_return_sequences=num_return)
  assert ours == theirs


@pytest.mark.parametrize("ngram,min_new", [(2, 0), (0, 6), (3, 4)])
def test_ngram_blocking_and_min_new_tokens_equal_hugging_face(models, ngram, min_new):
  ref, lm = models
  prompts = _prompts()[:1]
  eos = _eos(lm, prompts)
  ours = lm.generate(prompts, N, num_beams=3, no_repeat_ngram_size=ngram, min_new_tokens=min_new, stop=[[eos]])
  assert ours == _hf(ref, prompts, eos, num_beams=3, no_repeat_ngram_size=ngram, min_new_tokens=min_new)
  if min_new:
    assert len(ours[0]) >= min_new
  if ngram:
    sequence = prompts[0] + ours[0]
    grams = [tuple(sequence[i:i + ngram]) for i in range(len(sequence) - ngram + 1)]
    assert len(grams) == len(set(grams)), "an n-gram repeated"


def test_long_prompts_whose_bucket_would_overflow_the_context_equal_hugging_face(models):
  ref, lm = models
  rng = np.random.default_rng(1)
  prompts = [[int(t) for t in rng.integers(0, 97, n)] for n in (40, 64 - N)]  # Bucketed to 64, + N > the context.
  eos = _eos(lm, prompts)
  ours = lm.generate(prompts, N, num_beams=3, num_return_sequences=2, stop=[[eos]])
  assert ours == _hf(ref, prompts, eos, num_beams=3, num_return_sequences=2)


@pytest.mark.parametrize("setting", [{"temperature": 0.7}, {"temperature": 0}, {"top_k": 5}, {"top_p": 0.9},
                                     {"num_samples": 2}])
def test_a_sampling_setting_with_beams_is_an_error_naming_it_not_silently_ignored(models, setting):
  _, lm = models
  name, value = next(iter(setting.items()))
  with pytest.raises(ValueError, match=rf"{name}={value!r} not used by beam search \(num_beams=2\)"):
    lm.generate(_prompts(), N, num_beams=2, **setting)

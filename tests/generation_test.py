"""Requests: ragged batches, greedy equivalents, reproducible seeds, bucketing without recompiles, stop sequences,
unconditional samples, UTF-8-safe streaming text, truncation and bad input.

These tests hold generation to its own promises, one call against another on the same path (a ragged batch
against each prompt alone, top_k=1 against greedy, a stream against `generate`, a stop against the uncut text);
the reference outside gptjax (Hugging Face `generate` on the same weights) is sampling_test.py's and beam_test.py's.
"""

import dataclasses

import numpy as np
import pytest

from gptjax.inference import engine as E
from gptjax.inference import generation as G
from gptjax.inference import sampling as S
from gptjax.tokenizer import char_tokenizer, load_tokenizer, train_bpe
from tests import assets
from tests.tiny_lm import CORPUS, SAMPLE, TINY, random_lm
from tests.tiny_lm import text_lm as make_text_lm


@pytest.fixture(scope="module")
def bpe():
  return train_bpe(CORPUS, 300)


@pytest.fixture(scope="module")
def text_lm(bpe):
  return make_text_lm(bpe)


def test_ragged_batch_equals_each_prompt_alone_and_greedy_equivalents(text_lm):
  prompts = ["Hello", "emoji 😀 and", "日本"]
  batch = text_lm.generate(prompts, 12, temperature=0)
  assert batch == [text_lm.generate([p], 12, temperature=0)[0] for p in prompts]
  assert len(set(batch)) == 3
  assert text_lm.generate(prompts, 12, temperature=1.0, top_k=1, seed=3) == batch
  assert text_lm.generate(prompts, 12, temperature=1.0, top_p=1e-6, seed=4) == batch
  assert text_lm.generate(prompts, 12, temperature=0, top_k=5, top_p=0.5, seed=5) == batch


def test_sampling_is_reproducible_and_rows_are_independent_of_the_batch(text_lm):
  sample = lambda prompts, seed=7: text_lm.generate(prompts, 12, **SAMPLE, seed=seed, num_samples=2)
  first = sample(["Hello", "x"])
  assert len(first) == 4
  assert sample(["Hello", "x"]) == first
  assert sample(["Hello", "x"], seed=8) != first
  assert first[0] != first[1]  # Two samples of one prompt draw differently.
  # Row keys depend on (seed, prompt index, sample index) only, not on the other prompts in the batch.
  assert sample(["Hello", "日本"])[:2] == first[:2]


def test_new_prompt_lengths_reuse_the_compiled_programs():
  lm = random_lm(dataclasses.replace(TINY, vocab_size=5, num_layers=1))  # An architecture no other test compiles.
  lm.generate([[1] * 2, [2] * 6], 3, temperature=1.0, top_k=2)  # Warm-up: 2 slots, cache 16, prompt bucket 8.
  before = E.trace_counts()
  for n, new, temperature, top_k in [(3, 4, 1.0, 2), (5, 6, 0.7, 3), (7, 2, 1.3, 1), (1, 8, 1.0, 4), (4, 5, 0, 0)]:
    lm.generate([[1] * n, [2] * (8 - n)], new, temperature=temperature, top_k=top_k, seed=n)
  assert E.trace_counts() == before
  lm.generate([[1] * 11, [3]], 4, temperature=1.0, top_k=2)  # 11 tokens: the next prompt bucket.
  after = E.trace_counts()
  assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {"prefill": 1,
                                                                                             "insert": 1}


def test_buckets_are_powers_of_two_within_the_cap():
  assert [E.bucket(n) for n in (1, 8, 9, 16, 17, 1000)] == [8, 8, 16, 16, 32, 1024]
  assert E.bucket(3, 1) == 4 and E.bucket(600, 8, 512) == 512


# ----- Stop sequences, unconditional samples, id prompts. ------------------------------------------------------------


def test_stop_strings_cut_the_text_and_token_stops_cut_ids(text_lm):
  kwargs = dict(SAMPLE, seed=1, stop_at_eos=False)
  full = text_lm.generate(["Hello"], 14, **kwargs)[0]
  assert len(full) > 6
  stop = full[3:5]
  cut = full[:full.find(stop)]
  assert text_lm.generate(["Hello"], 14, stop=stop, **kwargs) == [cut]
  assert E.generate(text_lm, ["Hello"], 14, S.SamplingParams(**SAMPLE), seed=1, stop=stop, stop_at_eos=False,
                    return_finish_reasons=True) == ([cut], ["stop"])
  assert "".join(text_lm.stream("Hello", 14, stop=stop, **kwargs)) == cut
  # One stop list per prompt: only the first prompt has one.
  four = text_lm.generate(["Hello"] * 4, 14, **kwargs)
  assert four[0] == full
  assert text_lm.generate(["Hello"] * 4, 14, stop=[[stop], None, None, None], **kwargs) == [cut] + four[1:]
  ids = text_lm.generate([[5, 6]], 14, **kwargs)[0]
  assert text_lm.generate([[5, 6]], 14, stop=[ids[3:5]], **kwargs) == [ids[:3]]


def test_unconditional_samples_start_from_endoftext(text_lm, bpe):
  assert bpe.eos_id is not None
  assert text_lm.generate(None, 14, **SAMPLE) == text_lm.generate(["<|endoftext|>"], 14, **SAMPLE)


def test_without_endoftext_generation_runs_to_max_new_tokens():
  no_eos = random_lm(dataclasses.replace(TINY, vocab_size=4, num_layers=1), char_tokenizer("abc "))
  with pytest.raises(ValueError, match="starts from <|endoftext|>, which this model's tokenizer lacks"):
    no_eos.generate(None, 4)
  # GPT-1 and character tokenizers have no <|endoftext|>: only stop sequences or max_new_tokens end a sample.
  assert [len(t) for t in no_eos.generate(["ab", "c"], 6, temperature=1.0)] == [6, 6]


# ----- Streaming text. -----------------------------------------------------------------------------------------------


def test_text_stream_never_splits_a_character_with_the_gpt2_vocabulary():
  tokenizer = load_tokenizer(assets.gpt2_vocab_dir())
  text = "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 日本語のテキスト 中文 Ångström"
  ids = tokenizer.encode(text)
  stream = G.TextStream(tokenizer)
  pieces = [stream.push([i]) for i in ids] + [stream.finish()]
  assert "".join(pieces) == text
  assert not any("\ufffd" in p for p in pieces)
  assert sum(p == "" for p in pieces) > 3  # Characters did span tokens here.


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_text_stream_equals_decoding_at_once(kind, bpe):
  tokenizer = bpe if kind == "bpe" else char_tokenizer(CORPUS)
  rng = np.random.default_rng(0)
  for _ in range(200):  # Random ids: invalid and truncated UTF-8 included.
    ids = rng.integers(0, tokenizer.vocab_size, rng.integers(1, 8)).tolist()
    stream = G.TextStream(tokenizer)
    assert "".join([stream.push([i]) for i in ids] + [stream.finish()]) == tokenizer.decode(ids)


def test_text_stream_holds_back_a_possible_stop_string(bpe):
  stream = G.TextStream(bpe, stop_strings=["STOP"])
  assert stream.push(bpe.encode("abc ST")) == "abc "
  assert stream.push(bpe.encode("x")) == "STx"
  assert stream.push(bpe.encode(" yS")) == " y"
  assert stream.push(bpe.encode("TOP and more")) == ""
  assert stream.stopped and stream.finish() == ""


def test_stream_yields_the_generated_text(text_lm):
  for prompt, seed in [("Hello", 4), ("日本", 1), (None, 0)]:
    pieces = list(text_lm.stream(prompt, 14, **SAMPLE, seed=seed))
    assert "".join(pieces) == text_lm.generate(None if prompt is None else [prompt], 14, **SAMPLE, seed=seed)[0]
  ids = [t for piece in text_lm.stream([3, 4, 5], 14, **SAMPLE, stop_at_eos=False) for t in piece]
  assert ids == text_lm.generate([[3, 4, 5]], 14, **SAMPLE, stop_at_eos=False)[0]
  assert len(ids) == 14 and max(ids) < text_lm.tokenizer.vocab_size < text_lm.config.vocab_size


# ----- Bad input. ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(prompts=["Hello 日本"], max_new_tokens=60), ValueError,
     r"Prompt 0 has 8 tokens; with max_new_tokens=60 that is 68 > the model's context block_size=64"),
    (dict(prompts=["ok", ""]), ValueError, r"Prompt 1 \(''\) is empty"),
    (dict(prompts=[[]]), ValueError, "Prompt 0 is empty"),
    (dict(prompts=[[3, 400]]), ValueError, r"Token id 400 is outside the model's vocabulary \[0, \d+\)"),
    (dict(prompts=[[3, -1]]), ValueError, r"Token id -1 is outside"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\] \(1 = off\), got 0.0"),
    (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\] \(1 = off\), got 1.5"),
    (dict(temperature=-0.5), ValueError, r"temperature must be a finite number >= 0 \(0 = greedy\), got -0.5"),
    (dict(temperature=float("nan")), ValueError, "temperature must be .* got nan"),
    (dict(top_k=-1), ValueError, r"top_k must be an integer in \[0, vocab_size=\d+\] \(0 = off\), got -1"),
    (dict(top_k=100000), ValueError, "top_k must be .* got 100000"),
    (dict(repetition_penalty=0), ValueError, "repetition_penalty must be a finite number > 0"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens must be a positive integer, got 0"),
    (dict(max_new_tokens=64), ValueError, "max_new_tokens=64 leaves no room for a prompt .* block_size=64"),
    (dict(num_samples=0), ValueError, "num_samples must be a positive integer, got 0"),
    (dict(prompts="hello"), TypeError, r"prompts must be a list of prompts .* pass \[prompt\]"),
    (dict(prompts=[1, 2]), TypeError, r"prompts must be a list of prompts"),
    (dict(prompts=["a", [1]]), TypeError, "all strings or all token-id lists"),
    (dict(prompts=[[1]], stop="x"), ValueError, "stop string 'x' needs text prompts"),
    (dict(stop=[""]), ValueError, "a stop string is empty"),
    (dict(prompts=[[1]], stop=[[1]] * 8), ValueError, "stop: at most 7 token-id stop sequences, got 8"),
    (dict(prompts=[[1]], stop=[[1] * 17]), ValueError, "a token-id stop sequence may hold at most 16 ids, got 17"),
])
def test_bad_input_is_named(text_lm, kwargs, error, message):
  kwargs = {"prompts": ["hello"], "max_new_tokens": 4, **kwargs}
  with pytest.raises(error, match=message):
    text_lm.generate(**kwargs)


def test_truncation_policy_keeps_the_end_of_the_prompt():
  lm = random_lm(scale=4.0)
  long = (np.arange(20) * 7 % 61).tolist()
  others = [[1, 2], [3], [4, 5, 6]]
  with pytest.raises(ValueError, match="Prompt 0 has 20 tokens; .* keep its last 16 tokens"):
    lm.generate([long] + others, 16, temperature=0)
  assert (lm.generate([long] + others, 16, temperature=0, truncate_prompt=True)
          == lm.generate([long[-16:]] + others, 16, temperature=0))


def test_text_prompts_need_a_tokenizer():
  with pytest.raises(ValueError, match="Text prompts need a tokenizer"):
    random_lm().generate(["hello"], 2)

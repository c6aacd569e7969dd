"""Decoding: strategies against Hugging Face's processors and their distributions, the cached loop against full
forward passes and HF `generate`, stop sequences, bucketing without recompiles, streaming text, bad input, the CLI."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
import transformers
from transformers.generation import logits_process

import assets
import gptjax
from gptjax import generation as G
from gptjax import model as M
from gptjax import sampling as S
from gptjax.tokenizer import char_tokenizer, load_tokenizer, train_bpe

TINY = M.ModelConfig(vocab_size=61, block_size=32, num_layers=2, num_heads=2, emb_dim=16, mlp_dim=64,
                     dropout_rate=0.0, attention_dropout_rate=0.0)
# GPT-1's post-LN blocks, here with an untied output head too (the head is computed in sampling.py).
TINY_GPT1_UNTIED = dataclasses.replace(TINY, norm="post", final_norm=False, scale_residual_init=False,
                                       tie_embeddings=False)
# The sampling strategy most text_lm tests share (one compiled program per batch size).
SAMPLE = dict(temperature=1.5, top_k=50)
CORPUS = ["Hello world! Stream me: emoji 😀👍🏽 and 日本語のテキスト, 中文字符, Ångström."] * 8


def _lm(config=TINY, tokenizer=None, seed=0, scale=1.0):
  """A LanguageModel with random weights drawn in numpy (an eager Flax init would compile dozens of small ops).

  `scale` > 1 gives sharper distributions than GPT-2's 0.02 init, so greedy paths vary and margins are not ties.
  """
  shapes = jax.eval_shape(lambda: nn.meta.unbox(M.init_params(config, jax.random.key(0))))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    return jnp.asarray(1.0 + 0.1 * noise if "scale" in jax.tree_util.keystr(path) else 0.02 * scale * noise)

  return gptjax.LanguageModel(config, jax.tree_util.tree_map_with_path(draw, shapes), tokenizer)


@pytest.fixture(scope="module")
def bpe():
  return train_bpe(CORPUS, 300)


@pytest.fixture(scope="module")
def text_lm(bpe):
  # Tests on this model keep to a few shapes (prompts <= 8 tokens, 12-16 new tokens, batches of 1 or 4) and
  # strategies, so that they share compiled programs: compiling is most of this file's time. Its embedding has 20
  # more rows than the tokenizer has tokens, as nanoGPT pads GPT-2's: those ids must never be sampled.
  config = dataclasses.replace(TINY, vocab_size=bpe.vocab_size + 20, block_size=64, num_layers=1)
  return _lm(config, bpe, scale=8.0)


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
  lm = _lm(config, scale=4.0)
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


def test_new_prompt_lengths_reuse_the_compiled_program():
  lm = _lm(dataclasses.replace(TINY, vocab_size=5, num_layers=1))  # An architecture no other test compiles.
  before = S.trace_counts().get("generate", 0)
  for n, new, temperature, top_k in [(3, 4, 1.0, 2), (5, 6, 0.7, 3), (7, 2, 1.3, 1), (1, 8, 1.0, 4)]:
    lm.generate([[1] * n, [2] * (8 - n)], new, temperature=temperature, top_k=top_k, seed=n)
  assert S.trace_counts()["generate"] == before + 1
  lm.generate([[1] * 11], 4, temperature=1.0, top_k=2)  # 11 tokens: the next prompt bucket.
  assert S.trace_counts()["generate"] == before + 2


def test_prompt_buckets_respect_the_context():
  for prompt_len, new, block in [(3, 4, 32), (9, 4, 32), (20, 12, 32), (1, 31, 32), (31, 1, 32), (100, 400, 1024)]:
    P, T = G.bucket_lengths(prompt_len, new, block)
    assert prompt_len <= P and T <= block and T - P >= new


# ----- Stop sequences, unconditional samples, id prompts. ------------------------------------------------------------


def test_stop_strings_cut_the_text_and_token_stops_cut_ids(text_lm):
  kwargs = dict(SAMPLE, seed=1, stop_at_eos=False)
  full = text_lm.generate(["Hello"], 14, **kwargs)[0]
  assert len(full) > 6
  stop = full[3:5]
  cut = full[:full.find(stop)]
  assert text_lm.generate(["Hello"], 14, stop=stop, **kwargs) == [cut]
  assert G.generate(text_lm, ["Hello"], 14, S.SamplingParams(**SAMPLE), seed=1, stop=stop, stop_at_eos=False,
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
  no_eos = _lm(dataclasses.replace(TINY, vocab_size=4, num_layers=1), char_tokenizer("abc "))
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
])
def test_bad_input_is_named(text_lm, kwargs, error, message):
  kwargs = {"prompts": ["hello"], "max_new_tokens": 4, **kwargs}
  with pytest.raises(error, match=message):
    text_lm.generate(**kwargs)


def test_truncation_policy_keeps_the_end_of_the_prompt():
  lm = _lm(scale=4.0)
  long = (np.arange(20) * 7 % 61).tolist()
  others = [[1, 2], [3], [4, 5, 6]]
  with pytest.raises(ValueError, match="Prompt 0 has 20 tokens; .* keep its last 16 tokens"):
    lm.generate([long] + others, 16, temperature=0)
  assert (lm.generate([long] + others, 16, temperature=0, truncate_prompt=True)
          == lm.generate([long[-16:]] + others, 16, temperature=0))


def test_text_prompts_need_a_tokenizer():
  with pytest.raises(ValueError, match="Text prompts need a tokenizer"):
    _lm().generate(["hello"], 2)


# ----- `python -m gptjax.sample`. ------------------------------------------------------------------------------------


def test_sample_command_prints_the_samples(tmp_path, text_lm):
  text_lm.save(tmp_path / "model")
  (tmp_path / "prompt.txt").write_text("Hello 日本", encoding="utf-8")
  env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1]), "JAX_PLATFORMS": "cpu",
         "PYTHONIOENCODING": "utf-8"}
  command = [sys.executable, "-m", "gptjax.sample", f"--model={tmp_path / 'model'}",
             f"--start=FILE:{tmp_path / 'prompt.txt'}", "--num_samples=4", "--max_new_tokens=12", "--temperature=1.5",
             "--top_k=50", "--seed=3"]
  out = subprocess.run(command, capture_output=True, text=True, env=env, encoding="utf-8", timeout=300)
  assert out.returncode == 0, out.stderr
  samples = text_lm.generate(["Hello 日本"], 12, temperature=1.5, top_k=50, seed=3, num_samples=4)
  assert out.stdout == "".join(f"Hello 日本{s}\n{'-' * 40}\n" for s in samples)
  bad = subprocess.run(command[:4] + ["--top_p=2"], capture_output=True, text=True, env=env, timeout=300)
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1] == "gptjax.sample: error: top_p must be in (0, 1] (1 = off), got 2.0"

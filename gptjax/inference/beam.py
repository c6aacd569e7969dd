"""Beam search, n-gram blocking and a minimum length: decoding that keeps per-row history, in one compiled program.

`generate` (behind `LanguageModel.generate(..., num_beams=..., no_repeat_ngram_size=..., min_new_tokens=...)`) runs
a whole request in one `jax.jit` program: the prompts are prefilled once, each row's cache is repeated over its
beams, and a `lax.while_loop` chooses tokens, reorders the cache rows by beam index (a gather over the batch axis of
every cache leaf) and feeds the chosen tokens back. The engine's slots (`engine.py`) serve independent requests; a
beam's rows are not independent, so they get this program instead.

Beam search follows Hugging Face `generate(num_beams=K, length_penalty=a, early_stopping=...)` step for step, so
the tokens are equal on the same weights:
  - scores are sums of log-softmax log-probabilities; processors (`no_repeat_ngram_size`, `min_new_tokens`) set
    banned tokens to -inf after the log-softmax (no renormalisation);
  - each step keeps the 2K best (beam, token) continuations of each prompt (K per end-of-sequence id more when
    there are several); those ending in an end-of-sequence id, or at `max_new_tokens`, are finished hypotheses
    scored `sum_logprobs / t ** a` (t = generated tokens, the end-of-sequence id included), but only when among
    the K best; the K best unfinished continue;
  - a prompt is done when K hypotheses are finished (`early_stopping=True`), or (`False`) when the best running
    beam's score / t ** a cannot beat the worst finished one (HF's heuristic); 'never' uses the longest possible t
    when a > 0.
  - Lengths count from the padded prompt length, as HF's do for a left-padded batch, so they are equal for ragged
    prompts too. The returned sequences are the best `num_return_sequences` hypotheses, best first.

`no_repeat_ngram_size` n: a token that would complete an n-gram already present in the row's real tokens (prompt
and generated; HF also counts a left-padded batch's pad tokens) is banned. `min_new_tokens` m: end-of-sequence ids
are banned for the first m steps. With `num_beams=1` the tokens are chosen by the usual sampling rules
(`sampling.choose_tokens_per_row`, keys `fold_in(fold_in(key(seed), row), step)`).
"""

from __future__ import annotations

import functools
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import model as model_lib
from gptjax.inference import programs as engine_lib  # The engine's compiled-program helpers: bucketing, trace counts.
from gptjax.inference import generation
from gptjax.inference import quantize
from gptjax.inference import sampling

_BIG = 1.0e9  # HF's mask value for scores: a large finite number, so that masked sums stay ordered.
MAX_EOS_IDS = 8  # End-of-sequence ids per row (single-token stops), padded with -1.


def banned_ngram_tokens(history_BT, valid_BT, length_B, n: int, vocab_size: int):
  """bool [B, V]: tokens that would complete an n-gram already in each row's history.

  Args:
    history_BT: Tokens, the row's real ones marked by `valid_BT`; the next token goes at position `length_B`.
    valid_BT: bool, real tokens (left padding and unwritten positions False).
    length_B: Positions written so far (the next token's position).
    n: The n-gram size (>= 1).
    vocab_size: V.
  """
  B, T = history_BT.shape
  # The last n - 1 tokens before the next one.
  last_BN = jnp.stack([jnp.take_along_axis(history_BT, jnp.clip(length_B - (n - 1) + i, 0, T - 1)[:, None], 1)[:, 0]
                       for i in range(n - 1)], axis=1) if n > 1 else jnp.zeros((B, 0), history_BT.dtype)
  last_valid_B = jnp.ones((B,), jnp.bool_)
  for i in range(n - 1):
    j_B = length_B - (n - 1) + i
    last_valid_B &= (j_B >= 0) & jnp.take_along_axis(valid_BT, jnp.clip(j_B, 0, T - 1)[:, None], 1)[:, 0]
  # An n-gram starting at j matches if its first n - 1 tokens equal the last ones and all n are real and written.
  J = T - n + 1
  match_BJ = jnp.ones((B, J), jnp.bool_) & last_valid_B[:, None]
  for i in range(n):
    match_BJ &= valid_BT[:, i:i + J]
    if i < n - 1:
      match_BJ &= history_BT[:, i:i + J] == last_BN[:, i:i + 1]
  match_BJ &= (jnp.arange(J)[None] + n - 1) < length_B[:, None]
  follower_BJ = jnp.where(match_BJ, history_BT[:, n - 1:n - 1 + J], vocab_size)
  return jnp.zeros((B, vocab_size), jnp.bool_).at[jnp.arange(B)[:, None], follower_BJ].set(True, mode="drop")


def _process(logprobs_BV, eos_BE, step, history_BT, valid_BT, length_B, ngram: int, min_new_tokens):
  """HF's logits processors on log-probabilities: n-gram blocking and the minimum length, as -inf."""
  B, V = logprobs_BV.shape
  if ngram > 0:
    logprobs_BV = jnp.where(banned_ngram_tokens(history_BT, valid_BT, length_B, ngram, V), -jnp.inf, logprobs_BV)
  is_eos_BV = jnp.zeros((B, V), jnp.bool_).at[jnp.arange(B)[:, None], jnp.where(eos_BE >= 0, eos_BE, V)].set(
      True, mode="drop")
  return jnp.where(is_eos_BV & (step < min_new_tokens), -jnp.inf, logprobs_BV)


def _prefill(config, params, tokens_BP, mask_BP, rows_per_prompt: int, length: int):
  """The prompts' cache (length `length`) and last logits, each row repeated `rows_per_prompt` times."""
  B, P = tokens_BP.shape
  decode_config = engine_lib.inference_config(config)
  cache = model_lib.init_cache(decode_config, B, length)
  logits_BV, cache = sampling.model_tokens_to_logits(config)(params, tokens_BP, mask_BP, cache)
  repeat = lambda x: jnp.repeat(x, rows_per_prompt, axis=0)
  return jax.tree.map(repeat, cache), repeat(logits_BV.astype(jnp.float32))


def _initial_history(tokens_BP, mask_BP, rows_per_prompt: int, max_new_tokens: int):
  R = tokens_BP.shape[0] * rows_per_prompt
  history = jnp.concatenate([jnp.repeat(tokens_BP, rows_per_prompt, 0),
                             jnp.full((R, max_new_tokens), -1, tokens_BP.dtype)], axis=1)
  valid = jnp.concatenate([jnp.repeat(mask_BP, rows_per_prompt, 0), jnp.zeros((R, max_new_tokens), jnp.bool_)], 1)
  return history, valid


@functools.partial(jax.jit, static_argnames=("config", "num_beams", "max_new_tokens", "early_stopping", "ngram",
                                             "vocab_limit"))
def _beam_program(config, params, tokens_BP, mask_BP, eos_BE, length_penalty, min_new_tokens, *, num_beams: int,
                  max_new_tokens: int, early_stopping: Union[bool, str], ngram: int, vocab_limit: int):
  """Beam search over B prompts (K = num_beams): finished scores [B, K] (best first) and tokens [B, K, N] (-1 after
  the end), with the number of generated tokens of each (end-of-sequence id included)."""
  engine_lib._TRACES["beam"] += 1  # pylint: disable=protected-access
  B, P = tokens_BP.shape
  K, N, E = num_beams, max_new_tokens, eos_BE.shape[1]
  keep = max(2, 1 + int(E)) * K  # HF keeps (1 + number of eos ids) * K candidates, at least 2K.
  cache, logits_RV = _prefill(config, params, tokens_BP, mask_BP, K, P + N)
  history_RT, valid_RT = _initial_history(tokens_BP, mask_BP, K, N)
  V = logits_RV.shape[1]
  eos_RE = jnp.repeat(eos_BE, K, axis=0)
  top_mask = jnp.arange(keep) < K
  lp = jnp.asarray(length_penalty, jnp.float32)
  gather = lambda x_BK, i_BJ: jnp.take_along_axis(x_BK, i_BJ.reshape(i_BJ.shape + (1,) * (x_BK.ndim - 2)), axis=1)

  init = dict(
      step=jnp.int32(0), cache=cache, logits=logits_RV, history=history_RT, valid=valid_RT,
      running_scores=jnp.zeros((B, K), jnp.float32).at[:, 1:].set(-_BIG),
      running_tokens=jnp.full((B, K, N), -1, jnp.int32),
      scores=jnp.full((B, K), -_BIG, jnp.float32), tokens=jnp.full((B, K, N), -1, jnp.int32),
      lengths=jnp.zeros((B, K), jnp.int32), finished=jnp.zeros((B, K), jnp.bool_),
      improvable=jnp.ones((B, 1), jnp.bool_), all_hit=jnp.bool_(False))

  def cond(s):
    improvement_possible = jnp.any(s["improvable"])
    open_beam = ~(jnp.all(s["finished"]) & (early_stopping is True))
    return (s["step"] < N) & improvement_possible & open_beam & ~s["all_hit"]

  def body(s):
    t = s["step"]
    raw_RV = jnp.where(jnp.arange(V) < vocab_limit, s["logits"], -jnp.inf)
    logprobs_RV = _process(jax.nn.log_softmax(raw_RV, axis=-1), eos_RE, t, s["history"], s["valid"],
                           jnp.full((B * K,), P, jnp.int32) + t, ngram, min_new_tokens)
    total_BKV = logprobs_RV.reshape(B, K, V) + s["running_scores"][:, :, None]
    top_scores_BJ, top_index_BJ = jax.lax.top_k(total_BKV.reshape(B, K * V), keep)
    beam_BJ, token_BJ = top_index_BJ // V, top_index_BJ % V
    top_tokens_BJN = gather(s["running_tokens"], beam_BJ).at[:, :, t].set(token_BJ)
    is_eos_BJ = jnp.any(token_BJ[:, :, None] == jnp.repeat(eos_BE[:, None, :], keep, 1), axis=-1)
    hit_BJ = is_eos_BJ | (t + 1 >= N)

    # The K best unfinished continuations run on.
    running_BJ = top_scores_BJ + hit_BJ.astype(jnp.float32) * -_BIG
    next_BK = jax.lax.top_k(running_BJ, K)[1]
    running_scores = gather(running_BJ, next_BK)
    running_tokens = gather(top_tokens_BJN, next_BK)
    source_BK = gather(beam_BJ, next_BK)
    next_token_BK = gather(token_BJ, next_BK)

    # Finished ones among the K best join the kept hypotheses if they are better (HF's masks, in HF's order).
    just_finished_BJ = hit_BJ & top_mask[None]
    final_BJ = top_scores_BJ / ((t + 1).astype(jnp.float32) ** lp)
    full_B1 = jnp.all(s["finished"], axis=-1, keepdims=True) & (early_stopping is True)
    final_BJ = final_BJ + full_B1.astype(jnp.float32) * -_BIG
    final_BJ = final_BJ + (~s["improvable"]).astype(jnp.float32) * -_BIG
    final_BJ = final_BJ + (~just_finished_BJ).astype(jnp.float32) * -_BIG
    merged_scores = jnp.concatenate([s["scores"], final_BJ], axis=1)
    merged_tokens = jnp.concatenate([s["tokens"], top_tokens_BJN], axis=1)
    merged_lengths = jnp.concatenate([s["lengths"], jnp.full((B, keep), t + 1, jnp.int32)], axis=1)
    merged_finished = jnp.concatenate([s["finished"], just_finished_BJ], axis=1)
    best_BK = jax.lax.top_k(merged_scores, K)[1]
    scores, tokens = gather(merged_scores, best_BK), gather(merged_tokens, best_BK)
    lengths, finished = gather(merged_lengths, best_BK), gather(merged_finished, best_BK)

    # HF's early-stopping heuristic, with the length after this step.
    length = (t + 1).astype(jnp.float32)
    if early_stopping == "never":
      length = jnp.where(lp > 0, jnp.float32(N), length)
    best_running_B1 = running_scores[:, :1] / (length ** lp)
    worst_B1 = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), -_BIG)
    improvable = s["improvable"] & jnp.any(best_running_B1 > worst_B1, axis=-1, keepdims=True)

    # Reorder every cache row (and the histories) by the beam it continues, then feed the chosen tokens.
    rows_R = (jnp.arange(B)[:, None] * K + source_BK).reshape(-1)
    cache = jax.tree.map(lambda x: jnp.take(x, rows_R, axis=0), s["cache"])
    token_R = next_token_BK.reshape(-1)
    history = jnp.take(s["history"], rows_R, axis=0).at[:, P + t].set(token_R)
    valid = jnp.take(s["valid"], rows_R, axis=0).at[:, P + t].set(True)
    logits, cache = jax.lax.cond(
        t + 1 < N, lambda c: sampling.model_tokens_to_logits(config)(params, token_R[:, None],
                                                                       jnp.ones((B * K, 1), jnp.bool_), c),
        lambda c: (s["logits"].astype(jnp.float32), c), cache)
    return dict(step=t + 1, cache=cache, logits=logits.astype(jnp.float32), history=history, valid=valid,
                running_scores=running_scores, running_tokens=running_tokens, scores=scores, tokens=tokens,
                lengths=lengths, finished=finished, improvable=improvable, all_hit=jnp.all(hit_BJ))

  s = jax.lax.while_loop(cond, body, init)
  return s["scores"], s["tokens"], s["lengths"]


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "ngram", "vocab_limit"))
def _sample_program(config, params, tokens_RP, mask_RP, eos_RE, seed, temperature, top_k, top_p, min_new_tokens, *,
                    max_new_tokens: int, ngram: int, vocab_limit: int):
  """One row per sample, the usual sampling rules plus the processors: tokens [R, N] (-1 after the end)."""
  engine_lib._TRACES["constrained_sample"] += 1  # pylint: disable=protected-access
  R, P = tokens_RP.shape
  N = max_new_tokens
  cache, logits_RV = _prefill(config, params, tokens_RP, mask_RP, 1, P + N)
  history_RT, valid_RT = _initial_history(tokens_RP, mask_RP, 1, N)
  V = logits_RV.shape[1]
  stream_R = jnp.arange(R, dtype=jnp.int32)

  def cond(s):
    return (s[0] < N) & jnp.any(s[5])

  def body(s):
    t, cache, logits_RV, history_RT, valid_RT, active_R, out_RN = s
    raw_RV = jnp.where(jnp.arange(V) < vocab_limit, logits_RV, -jnp.inf)
    raw_RV = _process(raw_RV, eos_RE, t, history_RT, valid_RT, jnp.full((R,), P, jnp.int32) + t, ngram,
                      min_new_tokens)
    keys_R = jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), r), t))(stream_R)
    token_R = sampling.choose_tokens_per_row(keys_R, raw_RV, jnp.full((R,), temperature), jnp.full((R,), top_k),
                                             jnp.full((R,), top_p))
    out_RN = out_RN.at[:, t].set(jnp.where(active_R, token_R, -1))
    history_RT = history_RT.at[:, P + t].set(token_R)
    valid_RT = valid_RT.at[:, P + t].set(active_R)
    active_R = active_R & ~jnp.any(token_R[:, None] == eos_RE, axis=-1)
    logits_RV, cache = sampling.model_tokens_to_logits(config)(params, token_R[:, None], active_R[:, None], cache)
    return t + 1, cache, logits_RV.astype(jnp.float32), history_RT, valid_RT, active_R, out_RN

  init = (jnp.int32(0), cache, logits_RV, history_RT, valid_RT, jnp.ones((R,), jnp.bool_),
          jnp.full((R, N), -1, jnp.int32))
  return jax.lax.while_loop(cond, body, init)[6]


def _padded(rows, cap: int):
  """Left-padded [B, P] tokens and mask, P bucketed but at most `cap` (the context less the new tokens: the cache
  holds P + max_new_tokens positions)."""
  P = engine_lib.bucket(max(len(r) for r in rows), 8, cap)
  tokens, mask = np.zeros((len(rows), P), np.int32), np.zeros((len(rows), P), bool)
  for b, row in enumerate(rows):
    tokens[b, P - len(row):], mask[b, P - len(row):] = row, True
  return tokens, mask


def _eos_array(token_stops):
  eos = np.full((len(token_stops), MAX_EOS_IDS), -1, np.int32)
  for r, stops in enumerate(token_stops):
    ids = sorted({s[0] for s in stops if len(s) == 1})[:MAX_EOS_IDS]
    eos[r, :len(ids)] = ids
  return eos


def generate(lm, prompts, max_new_tokens: int, strategy: sampling.SamplingParams = sampling.SamplingParams(), *,
             num_beams: int = 1, length_penalty: float = 1.0, early_stopping: Union[bool, str] = False,
             num_return_sequences: int = 1, no_repeat_ngram_size: int = 0, min_new_tokens: int = 0, seed: int = 0,
             stop=None, stop_at_eos: bool = True, truncate_prompt: bool = False):
  """`LanguageModel.generate` with beams, n-gram blocking or a minimum length (see there and the module docstring).

  Returns `len(prompts) * num_return_sequences` continuations, prompt-major (best beam first). Single-token stop
  sequences (and `<|endoftext|>`) end a hypothesis inside the search; longer stop sequences and stop strings cut the
  returned text afterwards.
  """
  for name, value, low in (("num_beams", num_beams, 1), ("num_return_sequences", num_return_sequences, 1),
                           ("no_repeat_ngram_size", no_repeat_ngram_size, 0), ("min_new_tokens", min_new_tokens, 0)):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
      raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
  if num_beams > 1 and num_return_sequences > num_beams:
    raise ValueError(f"num_return_sequences={num_return_sequences} must be <= num_beams={num_beams}")
  if early_stopping not in (True, False, "never"):
    raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
  if not np.isfinite(length_penalty):
    raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
  if min_new_tokens > max_new_tokens:
    raise ValueError(f"min_new_tokens={min_new_tokens} exceeds max_new_tokens={max_new_tokens}")
  if strategy.repetition_penalty != 1:
    raise ValueError("repetition_penalty is not supported with num_beams, no_repeat_ngram_size or min_new_tokens")
  beams = num_beams > 1
  request = generation.prepare(lm, prompts, max_new_tokens, strategy, seed, stop, 1 if beams else num_return_sequences,
                               stop_at_eos, truncate_prompt)
  engine = lm.engine(num_slots=1)
  config, vocab_limit = engine.config, engine.vocab_limit
  params = quantize.dequantize_tree(engine.params)  # A quantized model's weights, as float (beam search is fp).
  tokens, mask = _padded(request.rows, lm.config.block_size - max_new_tokens)
  eos = _eos_array(request.token_stops)
  if beams:
    _, out_BKN, lengths_BK = jax.device_get(_beam_program(
        config, params, tokens, mask, eos, np.float32(length_penalty), np.int32(min_new_tokens), num_beams=num_beams,
        max_new_tokens=max_new_tokens, early_stopping=early_stopping, ngram=no_repeat_ngram_size,
        vocab_limit=vocab_limit))
    generated = [list(out_BKN[b, k, :lengths_BK[b, k]]) for b in range(len(request.rows))
                 for k in range(num_return_sequences)]
    rows = [request.rows[b] for b in range(len(request.rows)) for _ in range(num_return_sequences)]
    token_stops = [request.token_stops[b] for b in range(len(request.rows)) for _ in range(num_return_sequences)]
    string_stops = [request.string_stops[b] for b in range(len(request.rows)) for _ in range(num_return_sequences)]
  else:
    out_RN = jax.device_get(_sample_program(
        config, params, tokens, mask, eos, np.uint32(request.seed % 2**32), np.float32(strategy.temperature),
        np.int32(strategy.top_k), np.float32(strategy.top_p), np.int32(min_new_tokens), max_new_tokens=max_new_tokens,
        ngram=no_repeat_ngram_size, vocab_limit=vocab_limit))
    generated = [[int(t) for t in row if t >= 0] for row in out_RN]
    rows, token_stops, string_stops = request.rows, request.token_stops, request.string_stops
  outputs = []
  for ids, row, stops, strings in zip(generated, rows, token_stops, string_stops):
    ids = _cut_at_stop([int(t) for t in ids], stops)
    if request.text:
      text = generation.TextStream(lm.tokenizer, row, strings)
      outputs.append(text.push(ids) + text.finish())
    else:
      outputs.append(ids)
  return outputs


def _cut_at_stop(ids: list[int], stops) -> list[int]:
  """`ids` before the first complete stop sequence (which is dropped)."""
  for end in range(1, len(ids) + 1):
    for seq in stops:
      if seq and end >= len(seq) and ids[end - len(seq):end] == list(seq):
        return ids[:end - len(seq)]
  return ids

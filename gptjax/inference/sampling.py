"""Choosing tokens: strategies on logits, per-request settings, and a model-agnostic decoding loop.

Four parts, bottom up (the first three here):

0. `SamplingSettings`: one request's settings (validated on the host), which the engine turns into arrays over its
   slots; `choose_tokens_per_row`, `apply_penalties_per_row` and `filter_per_row` take those arrays, so one compiled
   program serves requests with different settings (`gptjax/inference/engine.py`).

1. Strategies: small pure functions on next-token logits [B, V]: `greedy`, `apply_repetition_penalty`,
   `filter_top_k_top_p`, and `choose_tokens`, which combines them and draws with explicit per-row keys.
2. The loop: `decode` / `decode_stream` know nothing of the model. Any function
   `tokens_to_logits(params, tokens_BL, mask_BL, cache) -> (logits_BV of the last position, new cache)` drives them
   (`model_tokens_to_logits(config)` adapts `gptjax.model.GPT`; tests drive the loop with hand-written functions of
   known distribution). A whole generation is one compiled program: the prefill, then a `lax.while_loop` that
   chooses a token and feeds it, until every row has stopped or has `max_new_tokens` tokens. Streaming runs the
   same prefill and loop body as two programs. Programs are cached by jit on (shapes, static strategy):
   temperature, top-k, top-p, penalty, seed and `max_new_tokens` are traced values, so changing them does not
   recompile; only switching a filter on or off does. `trace_counts()` makes compilations observable.
3. Requests live in `gptjax/inference/generation.py` (validation, tokenisation, stop strings and UTF-8-safe streaming
   text) and run on the slots of `gptjax/inference/engine.py` (behind `LanguageModel.generate` / `.stream`).

Ragged batches are left-padded: the cache index is shared by the batch, pad slots are masked, and each row's
positions count only its real tokens (see `gptjax/model.py`).

Random keys are explicit: the caller gives one per row, and row b draws its token at step s with
`fold_in(keys_B[b], s)`, so a row's samples do not depend on the other rows of its batch.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import numbers
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model import GPT, ModelConfig

TokensToLogits = Callable[[Any, jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
_NEG_INF = -jnp.inf
_TRACES: collections.Counter = collections.Counter()


def trace_counts() -> dict[str, int]:
  """How many times each decoding program was traced (= compiled) in this process, by program name."""
  return dict(_TRACES)


# ----------------------------------------------------------------------------------------------------------------------
# 0. Per-request settings, as arrays over the engine's slots.
# ----------------------------------------------------------------------------------------------------------------------

# Static sizes of the engine's per-slot arrays (part of its compiled programs' shapes).
MAX_TOP_LOGPROBS = 20  # OpenAI's largest `top_logprobs`.
MAX_STOP_SEQUENCES = 8  # OpenAI allows 4 stop strings; <|endoftext|> and a caller's own ids take the rest.
MAX_STOP_LENGTH = 16  # Tokens per stop sequence.


def _is_real(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  """One request's settings; the engine holds them as arrays over its slots (see `LanguageModel.generate` for the
  maths of the first four, applied in Hugging Face's order).

  Attributes:
    temperature: T >= 0; probabilities are softmax(l / T). 0 means greedy (argmax).
    top_k: Keep the k largest logits; 0 disables.
    top_p: Nucleus: the smallest set of most likely tokens whose probability reaches p; 1 disables.
    repetition_penalty: CTRL's penalty r > 0 on tokens of the prompt or generated so far; 1 disables.
    presence_penalty: OpenAI's: l_i -= presence for every token i generated so far, in [-2, 2].
    frequency_penalty: OpenAI's: l_i -= frequency * (times token i was generated so far), in [-2, 2].
    seed: The draws' seed (any integer; taken modulo 2**32).
    stream_index: Which stream of the seed (the choice index for n > 1). Step s draws with
      `fold_in(fold_in(key(seed), stream_index), s)`, so a request's tokens do not depend on what shares the batch.
    max_tokens: Most tokens to generate.
    stop_token_ids: Token-id sequences that end the request (each reported, as the text layer strips them); the
      caller adds <|endoftext|> if wanted.
    logprobs: How many most likely alternatives to report per generated token (the chosen one's always is).
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  repetition_penalty: float = 1.0
  presence_penalty: float = 0.0
  frequency_penalty: float = 0.0
  seed: int = 0
  stream_index: int = 0
  max_tokens: int = 16
  stop_token_ids: tuple = ()
  logprobs: int = 0

  def validate(self, vocab_size: int) -> None:
    """Raises ValueError naming the first field outside its range, and the range."""
    SamplingParams(self.temperature, self.top_k, self.top_p, self.repetition_penalty).validate(vocab_size)
    for name in ("presence_penalty", "frequency_penalty"):
      value = getattr(self, name)
      if not _is_real(value) or not -2 <= value <= 2:
        raise ValueError(f"{name} must be a number in [-2, 2] (0 = off), got {value!r}")
    if not _is_int(self.seed):
      raise ValueError(f"seed must be an integer, got {self.seed!r}")
    if not _is_int(self.stream_index) or not 0 <= self.stream_index < 2**31:
      raise ValueError(f"stream_index must be an integer in [0, 2**31), got {self.stream_index!r}")
    if not _is_int(self.max_tokens) or self.max_tokens < 1:
      raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
    most = min(MAX_TOP_LOGPROBS, vocab_size)
    if not _is_int(self.logprobs) or not 0 <= self.logprobs <= most:
      raise ValueError(f"logprobs must be an integer in [0, {most}], got {self.logprobs!r}")
    stops = self.stop_token_ids
    if not isinstance(stops, (tuple, list)) or len(stops) > MAX_STOP_SEQUENCES:
      raise ValueError(f"stop_token_ids must be a tuple of at most {MAX_STOP_SEQUENCES} token-id tuples, got "
                       f"{stops!r}")
    for seq in stops:
      if (not isinstance(seq, (tuple, list)) or not 1 <= len(seq) <= MAX_STOP_LENGTH
          or not all(_is_int(t) and 0 <= t < vocab_size for t in seq)):
        raise ValueError(f"stop_token_ids: each sequence must hold 1 to {MAX_STOP_LENGTH} token ids in "
                         f"[0, vocab_size={vocab_size}), got {seq!r}")


def filter_per_row(logits_BV, top_k_B, top_p_B):
  """`filter_top_k_top_p` with each row's own k (0 = off) and p (1 = off); an off row is left exactly as it is."""
  V = logits_BV.shape[-1]
  sorted_BV = -jnp.sort(-logits_BV, axis=-1)  # Decreasing.
  k_B = jnp.where(top_k_B > 0, jnp.clip(top_k_B, 1, V), V).astype(jnp.int32)
  sorted_BV = jnp.where(jnp.arange(V) < k_B[:, None], sorted_BV, _NEG_INF)
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  mass_before_BV = (jnp.cumsum(probs_BV, axis=-1) - probs_BV).at[:, 0].set(0.0)
  # A row with p = 1 keeps everything: rounding may leave the mass before its last tokens at 1.0, not below.
  kept_B = jnp.sum((mass_before_BV < top_p_B[:, None]) | (top_p_B[:, None] >= 1), axis=-1, dtype=jnp.int32)
  last_B = jnp.minimum(k_B, kept_B) - 1
  threshold_B1 = jnp.take_along_axis(sorted_BV, last_B[:, None], axis=1)
  return jnp.where(logits_BV >= threshold_B1, logits_BV, _NEG_INF)


def apply_penalties_per_row(logits_BV, seen_BV, counts_BV, repetition_B, presence_B, frequency_B):
  """CTRL's repetition penalty on `seen_BV` tokens (prompt and generated), then OpenAI's presence and frequency
  penalties on generated `counts_BV`; each row with its own values (1, 0, 0 leave it exactly as it is)."""
  r_B1 = repetition_B[:, None]
  logits_BV = jnp.where(seen_BV, jnp.where(logits_BV > 0, logits_BV / r_B1, logits_BV * r_B1), logits_BV)
  counts_BV = counts_BV.astype(jnp.float32)
  return logits_BV - presence_B[:, None] * (counts_BV > 0) - frequency_B[:, None] * counts_BV


def choose_tokens_per_row(keys_B, logits_BV, temperature_B, top_k_B, top_p_B):
  """The next token of every row with its own strategy: greedy where T = 0, else a draw after top-k and top-p.

  The sort (top-k / top-p) and the draw run only when some row needs them (`lax.cond`), and rows that do not are
  unchanged by them, so a row's token depends on its own logits, settings and key only.

  Returns:
    int32 [B] token ids.
  """
  greedy_B = greedy(logits_BV)

  def draw(_):
    scaled_BV = logits_BV / jnp.where(temperature_B > 0, temperature_B, 1.0)[:, None]
    filtered_BV = jax.lax.cond(jnp.any((top_k_B > 0) | (top_p_B < 1)),
                               lambda x: filter_per_row(x, top_k_B, top_p_B), lambda x: x, scaled_BV)
    return jax.vmap(jax.random.categorical)(keys_B, filtered_BV).astype(jnp.int32)

  drawn_B = jax.lax.cond(jnp.any(temperature_B > 0), draw, lambda _: greedy_B, None)
  return jnp.where(temperature_B > 0, drawn_B, greedy_B)


def stop_sequences_array(stop_token_ids: Sequence[Sequence[int]]) -> np.ndarray:
  """One request's stop sequences as [MAX_STOP_SEQUENCES, MAX_STOP_LENGTH], right-aligned, -1 padding."""
  out = np.full((MAX_STOP_SEQUENCES, MAX_STOP_LENGTH), -1, np.int32)
  for s, seq in enumerate(stop_token_ids):
    out[s, MAX_STOP_LENGTH - len(seq):] = seq
  return out


def ends_with_stop(window_BL, stop_BSL):
  """Whether each row's last generated tokens `window_BL` (-1 before the first) end with one of its sequences."""
  match_BSL = (stop_BSL < 0) | (window_BL[:, None, :] == stop_BSL)
  return (match_BSL.all(axis=-1) & (stop_BSL >= 0).any(axis=-1)).any(axis=-1)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Strategies.
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How the next token is chosen from logits l (see `LanguageModel.generate` for the maths).

  Attributes:
    temperature: T >= 0; probabilities are softmax(l / T). 0 means greedy (argmax).
    top_k: Keep the k largest logits; 0 disables.
    top_p: Nucleus: keep the smallest set of most likely tokens whose probability sums to >= p; 1 disables.
    repetition_penalty: CTRL's penalty r > 0 on tokens already in the context; 1 disables.
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  repetition_penalty: float = 1.0

  def validate(self, vocab_size: int) -> None:
    """Raises ValueError naming the first parameter outside its range."""
    t, k, p, r = self.temperature, self.top_k, self.top_p, self.repetition_penalty
    real = lambda x: isinstance(x, numbers.Real) and not isinstance(x, bool)
    if not real(t) or not 0 <= t < float("inf"):
      raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or not 0 <= k <= vocab_size:
      raise ValueError(f"top_k must be an integer in [0, vocab_size={vocab_size}] (0 = off), got {k!r}")
    if not real(p) or not 0 < p <= 1:
      raise ValueError(f"top_p must be in (0, 1] (1 = off), got {p!r}")
    if not real(r) or not 0 < r < float("inf"):
      raise ValueError(f"repetition_penalty must be a finite number > 0 (1 = off), got {r!r}")

  def flags(self) -> "Flags":
    greedy = self.temperature == 0
    return Flags(greedy=greedy, top_k=not greedy and self.top_k > 0, top_p=not greedy and self.top_p < 1,
                 penalty=self.repetition_penalty != 1)

  def values(self, vocab_limit: Optional[int] = None) -> dict[str, np.generic]:
    """The traced values (changing them reuses the compiled program); ids >= `vocab_limit` are never chosen."""
    return dict(temperature=np.float32(self.temperature), top_k=np.int32(self.top_k),
                top_p=np.float32(self.top_p), repetition_penalty=np.float32(self.repetition_penalty),
                vocab_limit=np.int32(np.iinfo(np.int32).max if vocab_limit is None else vocab_limit))


class Flags(NamedTuple):
  """The static part of a strategy: which transformations are compiled into the program."""
  greedy: bool = False
  top_k: bool = False
  top_p: bool = False
  penalty: bool = False
  record_logits: bool = False


def greedy(logits_BV: jax.Array) -> jax.Array:
  """The most likely token of each row (the lowest id among ties), int32 [B]."""
  return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


def apply_repetition_penalty(logits_BV, context_BT, valid_BT, penalty):
  """CTRL's repetition penalty, as Hugging Face's `RepetitionPenaltyLogitsProcessor` applies it.

  Every token id present in a row's context (where `valid_BT`) has its logit l replaced by l / penalty when l > 0
  and l * penalty otherwise, once however often it occurs.

  Args:
    logits_BV: float logits.
    context_BT: int token ids seen so far (prompt and generated).
    valid_BT: bool; False marks padding and unwritten slots, which are not penalised.
    penalty: scalar > 0.

  Returns:
    The penalised logits [B, V].
  """
  B, V = logits_BV.shape
  seen_BT = jnp.take_along_axis(logits_BV, context_BT, axis=1)
  seen_BT = jnp.where(seen_BT > 0, seen_BT / penalty, seen_BT * penalty)
  index_BT = jnp.where(valid_BT, context_BT, V)  # Out of range: `mode='drop'` skips these slots.
  return logits_BV.at[jnp.arange(B)[:, None], index_BT].set(seen_BT, mode="drop")


def filter_top_k_top_p(logits_BV, top_k=None, top_p=None):
  """Sets logits outside the top-k and then outside the nucleus (top-p) to -inf, with one sort.

  top-k keeps the k largest logits (and any tied with the k-th). top-p then sorts the probabilities of what is
  left (renormalised) in decreasing order and keeps token i iff the probability mass strictly before it is < p:
  the smallest prefix whose mass reaches p, never empty. This is Hugging Face's `TopKLogitsWarper` followed by
  `TopPLogitsWarper`.

  Args:
    logits_BV: float logits (already divided by the temperature).
    top_k: int scalar in [1, V], or None to skip.
    top_p: float scalar in (0, 1], or None to skip.

  Returns:
    Filtered logits [B, V].
  """
  if top_k is None and top_p is None:
    return logits_BV
  V = logits_BV.shape[-1]
  sorted_BV = -jnp.sort(-logits_BV, axis=-1)  # Decreasing.
  last_B = jnp.full(logits_BV.shape[:1], V - 1, jnp.int32)  # Index (in sorted order) of the last kept token.
  if top_k is not None:
    k = jnp.clip(top_k, 1, V).astype(jnp.int32)
    last_B = jnp.minimum(last_B, k - 1)
    sorted_BV = jnp.where(jnp.arange(V) < k, sorted_BV, _NEG_INF)
  if top_p is not None:
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    mass_before_BV = mass_before_BV.at[:, 0].set(0.0)
    # Mass before is non-decreasing, so the kept tokens are a prefix; its length is the count of kept tokens.
    last_B = jnp.minimum(last_B, jnp.sum(mass_before_BV < top_p, axis=-1, dtype=jnp.int32) - 1)
  threshold_B1 = jnp.take_along_axis(sorted_BV, last_B[:, None], axis=1)
  return jnp.where(logits_BV >= threshold_B1, logits_BV, _NEG_INF)


def choose_tokens(keys_B, logits_BV, values: dict, flags: Flags, context_BT=None, valid_BT=None):
  """The next token of every row: penalty, then greedy, or temperature, top-k, top-p and a draw (HF's order).

  Args:
    keys_B: One PRNG key per row for this step (unused when greedy).
    logits_BV: float32 next-token logits.
    values: `SamplingParams.values()` (traced scalars).
    flags: Which transformations apply (static).
    context_BT, valid_BT: Tokens seen so far and their validity, for the repetition penalty.

  Returns:
    int32 [B] token ids.
  """
  # A model's embedding may have more rows than its tokenizer has tokens (nanoGPT pads GPT-2's 50257 to 50304):
  # ids the tokenizer cannot decode are never chosen.
  V = logits_BV.shape[-1]
  logits_BV = jnp.where(jnp.arange(V) < values["vocab_limit"], logits_BV, _NEG_INF)
  if flags.penalty:
    logits_BV = apply_repetition_penalty(logits_BV, context_BT, valid_BT, values["repetition_penalty"])
  if flags.greedy:
    return greedy(logits_BV)
  logits_BV = logits_BV / values["temperature"]
  logits_BV = filter_top_k_top_p(logits_BV, values["top_k"] if flags.top_k else None,
                                 values["top_p"] if flags.top_p else None)
  return jax.vmap(jax.random.categorical)(keys_B, logits_BV).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------------------------------
# 2. The loop.
# ----------------------------------------------------------------------------------------------------------------------


class DecodeState(NamedTuple):
  """The loop's carry. P = prompt slots, N = generated slots, T = P + N.

  Attributes:
    step: Tokens generated so far by live rows (shared by the batch).
    cache: The model's cache (whatever `tokens_to_logits` keeps).
    logits_BV: float32 logits of the next token (of the token at `step`).
    keys_B: Per-row PRNG keys; step s draws with `fold_in(key, s)`.
    context_BT: Prompt (left-padded) then generated tokens.
    valid_BT: Real prompt tokens and tokens generated before a row stopped.
    done_B: Rows that produced a stop sequence.
    num_tokens_B: Tokens generated per row, its stop sequence included.
    logits_BNV: Raw model logits of every step when recording, else [B, 0, V].
  """
  step: jax.Array
  cache: Any
  logits_BV: jax.Array
  keys_B: jax.Array
  context_BT: jax.Array
  valid_BT: jax.Array
  done_B: jax.Array
  num_tokens_B: jax.Array
  logits_BNV: jax.Array


def _stop_hit(context_BT, position, prompt_len: int, stop_BSL):
  """Whether the generated tokens ending at `position` end with one of the row's stop sequences.

  `stop_BSL` holds right-aligned sequences padded on the left with -1; an all -1 row is no sequence.
  """
  L = stop_BSL.shape[-1]
  index_L = position - (L - 1) + jnp.arange(L)
  window_BL = jnp.take(context_BT, jnp.maximum(index_L, 0), axis=1)
  generated_L = index_L >= prompt_len  # A stop sequence must lie in the generated text.
  match_BSL = (stop_BSL < 0) | ((window_BL[:, None, :] == stop_BSL) & generated_L)
  return (match_BSL.all(axis=-1) & (stop_BSL >= 0).any(axis=-1)).any(axis=-1)


def _sample_step(state: DecodeState, values, stop_BSL, prompt_len: int, flags: Flags) -> DecodeState:
  """Chooses and writes one token per live row from `state.logits_BV`; marks rows that completed a stop sequence."""
  keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.keys_B, state.step)
  token_B = choose_tokens(keys_B, state.logits_BV, values, flags, state.context_BT, state.valid_BT)
  live_B = ~state.done_B
  position = prompt_len + state.step
  column = lambda x_BT, x_B: jax.lax.dynamic_update_slice(x_BT, x_B[:, None], (0, position))
  context_BT = column(state.context_BT, jnp.where(live_B, token_B, 0))
  valid_BT = column(state.valid_BT, live_B)
  logits_BNV = state.logits_BNV
  if flags.record_logits:
    logits_BNV = jax.lax.dynamic_update_slice(logits_BNV, state.logits_BV[:, None], (0, state.step, 0))
  done_B = state.done_B | (live_B & _stop_hit(context_BT, position, prompt_len, stop_BSL))
  return state._replace(step=state.step + 1, context_BT=context_BT, valid_BT=valid_BT, done_B=done_B,
                        num_tokens_B=state.num_tokens_B + live_B, logits_BNV=logits_BNV)


def _prefill(tokens_to_logits, params, cache, prompt_BP, mask_BP, keys_B, *, flags: Flags,
             buffer_length: int) -> DecodeState:
  """Feeds the prompts in one call: the state holds the first token's logits."""
  B, _ = prompt_BP.shape
  logits_BV, cache = tokens_to_logits(params, prompt_BP, mask_BP, cache)
  pad_BN = jnp.zeros((B, buffer_length), jnp.int32)
  return DecodeState(
      step=jnp.int32(0), cache=cache, logits_BV=logits_BV.astype(jnp.float32), keys_B=keys_B,
      context_BT=jnp.concatenate([prompt_BP.astype(jnp.int32), pad_BN], axis=1),
      valid_BT=jnp.concatenate([mask_BP.astype(jnp.bool_), pad_BN.astype(jnp.bool_)], axis=1),
      done_B=jnp.zeros((B,), jnp.bool_), num_tokens_B=jnp.zeros((B,), jnp.int32),
      logits_BNV=jnp.zeros((B, buffer_length if flags.record_logits else 0, logits_BV.shape[-1]), jnp.float32))


def _decode_steps(tokens_to_logits, params, state: DecodeState, stop_BSL, values, until, *, prompt_len: int,
                  flags: Flags) -> DecodeState:
  """Chooses a token and feeds it, until `step == until` or every row is done.

  Each step samples from the logits in the state and then computes the next logits, so the sampler is compiled
  once and a stream can resume from any step; the price is one forward pass after the last token, which nobody
  uses (a conditional to skip it could copy the cache on some backends).
  """
  B = state.done_B.shape[0]

  def cond(s: DecodeState):
    return (s.step < until) & ~jnp.all(s.done_B)

  def body(s: DecodeState):
    s = _sample_step(s, values, stop_BSL, prompt_len, flags)
    position = prompt_len + s.step - 1
    token_B1 = jax.lax.dynamic_slice(s.context_BT, (0, position), (B, 1))
    valid_B1 = jax.lax.dynamic_slice(s.valid_BT, (0, position), (B, 1))
    logits_BV, cache = tokens_to_logits(params, token_B1, valid_B1, s.cache)
    return s._replace(cache=cache, logits_BV=logits_BV.astype(jnp.float32))

  return jax.lax.while_loop(cond, body, state)


def _split_cache(cache):
  """(arrays, None) for a concrete cache; (None, static spec) for one of `jax.ShapeDtypeStruct`s."""
  leaves, treedef = jax.tree.flatten(cache)
  if leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
    return None, (treedef, tuple((tuple(x.shape), jnp.dtype(x.dtype)) for x in leaves))
  return cache, None


def _materialize(cache, cache_spec):
  """An abstract cache becomes zeros inside the program: no host-side allocation or transfer per request."""
  if cache_spec is None:
    return cache
  treedef, leaves = cache_spec
  return jax.tree.unflatten(treedef, [jnp.zeros(shape, dtype) for shape, dtype in leaves])


@functools.partial(jax.jit, static_argnames=("tokens_to_logits", "flags", "buffer_length", "cache_spec"),
                   donate_argnames=("cache",))
def _generate_program(tokens_to_logits, params, cache, prompt_BP, mask_BP, keys_B, stop_BSL, values, max_new_tokens,
                      *, flags, buffer_length, cache_spec):
  _TRACES["generate"] += 1
  state = _prefill(tokens_to_logits, params, _materialize(cache, cache_spec), prompt_BP, mask_BP, keys_B,
                   flags=flags, buffer_length=buffer_length)
  # The cache is returned (and dropped by the caller) so that the donated input buffers can hold the loop's cache.
  return _decode_steps(tokens_to_logits, params, state, stop_BSL, values, max_new_tokens,
                       prompt_len=prompt_BP.shape[1], flags=flags)


@functools.partial(jax.jit, static_argnames=("tokens_to_logits", "flags", "buffer_length", "cache_spec"),
                   donate_argnames=("cache",))
def _prefill_program(tokens_to_logits, params, cache, prompt_BP, mask_BP, keys_B, *, flags, buffer_length,
                     cache_spec):
  _TRACES["stream_prefill"] += 1
  return _prefill(tokens_to_logits, params, _materialize(cache, cache_spec), prompt_BP, mask_BP, keys_B, flags=flags,
                  buffer_length=buffer_length)


@functools.partial(jax.jit, static_argnames=("tokens_to_logits", "flags", "prompt_len"), donate_argnames=("state",))
def _decode_program(tokens_to_logits, params, state, stop_BSL, values, until, *, flags, prompt_len):
  _TRACES["stream_decode"] += 1
  return _decode_steps(tokens_to_logits, params, state, stop_BSL, values, until, prompt_len=prompt_len, flags=flags)


@dataclasses.dataclass
class DecodeResult:
  """What `decode` returns, on the host.

  Attributes:
    tokens_BN: Generated tokens; row b's are `tokens_BN[b, :num_tokens_B[b]]` (its stop sequence included).
    num_tokens_B: Tokens generated per row.
    stopped_B: Rows that ended with a stop sequence (else they reached `max_new_tokens`).
    logits_BNV: Raw model logits at each step (only with `record_logits=True`).
  """
  tokens_BN: np.ndarray
  num_tokens_B: np.ndarray
  stopped_B: np.ndarray
  logits_BNV: Optional[np.ndarray] = None


def _check_buffer(max_new_tokens: int, buffer_length: Optional[int]) -> int:
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
  buffer_length = max_new_tokens if buffer_length is None else buffer_length
  if buffer_length < max_new_tokens:
    raise ValueError(f"buffer_length={buffer_length} is shorter than max_new_tokens={max_new_tokens}")
  return buffer_length


def _no_stops(batch: int) -> np.ndarray:
  return stop_array([[]] * batch)


def decode(tokens_to_logits: TokensToLogits, params, cache, prompt_BP, mask_BP, keys_B, max_new_tokens: int,
           sampling: SamplingParams = SamplingParams(), stop_BSL=None, *, buffer_length: Optional[int] = None,
           vocab_limit: Optional[int] = None, record_logits: bool = False) -> DecodeResult:
  """Generates up to `max_new_tokens` tokens per row in one compiled program.

  Args:
    tokens_to_logits: `(params, tokens_BL, mask_BL, cache) -> (logits_BV at the last position, cache)`. Must be the
      same Python object across calls for the compiled program to be reused.
    params: Passed to `tokens_to_logits` (a traced argument, not baked into the program).
    cache: Its initial (empty) cache, with room for P + buffer_length tokens: arrays (donated), or a tree of
      `jax.ShapeDtypeStruct`s for an all-zeros cache made inside the program.
    prompt_BP: int prompts, left-padded.
    mask_BP: bool, True at real prompt tokens. Each row needs at least one, in the last column.
    keys_B: One PRNG key per row.
    max_new_tokens: Tokens to generate at most (traced: any value up to `buffer_length` reuses the program).
    sampling: The strategy.
    stop_BSL: Optional int stop sequences per row, right-aligned, padded with -1 (see `stop_array`).
    buffer_length: Static room for generated tokens (default `max_new_tokens`); bucket it to avoid recompiles.
    vocab_limit: Only ids below it are chosen (e.g. the tokenizer's size); default: all.
    record_logits: Also return the raw model logits of every step (for tests and debugging).

  Returns:
    A `DecodeResult`.
  """
  buffer_length = _check_buffer(max_new_tokens, buffer_length)
  prompt_BP, mask_BP = np.asarray(prompt_BP, np.int32), np.asarray(mask_BP, bool)
  stop_BSL = np.asarray(_no_stops(prompt_BP.shape[0]) if stop_BSL is None else stop_BSL, np.int32)
  flags = sampling.flags()._replace(record_logits=record_logits)
  cache, cache_spec = _split_cache(cache)
  state = _generate_program(tokens_to_logits, params, cache, prompt_BP, mask_BP, keys_B, stop_BSL,
                            sampling.values(vocab_limit), np.int32(max_new_tokens), flags=flags,
                            buffer_length=buffer_length, cache_spec=cache_spec)
  P = prompt_BP.shape[1]
  context_BT, num_tokens_B, done_B = jax.device_get((state.context_BT, state.num_tokens_B, state.done_B))
  return DecodeResult(tokens_BN=np.asarray(context_BT[:, P:]), num_tokens_B=np.asarray(num_tokens_B),
                      stopped_B=np.asarray(done_B),
                      logits_BNV=np.asarray(state.logits_BNV) if record_logits else None)


def decode_stream(tokens_to_logits: TokensToLogits, params, cache, prompt_BP, mask_BP, keys_B, max_new_tokens: int,
                  sampling: SamplingParams = SamplingParams(), stop_BSL=None, *, buffer_length: Optional[int] = None,
                  vocab_limit: Optional[int] = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """`decode`, one step at a time: yields `(tokens_B, live_B, done_B)` after each step.

  `live_B` marks rows whose token is real (they had not stopped before this step); `done_B` rows have now stopped.
  The same compiled steps as `decode` run (the loop program called with one step to go), so for the same keys the
  tokens are the same. Stopping the iteration early stops the computation.
  """
  buffer_length = _check_buffer(max_new_tokens, buffer_length)
  prompt_BP, mask_BP = np.asarray(prompt_BP, np.int32), np.asarray(mask_BP, bool)
  stop_BSL = np.asarray(_no_stops(prompt_BP.shape[0]) if stop_BSL is None else stop_BSL, np.int32)
  flags = sampling.flags()
  values = sampling.values(vocab_limit)
  P = prompt_BP.shape[1]
  cache, cache_spec = _split_cache(cache)
  state = _prefill_program(tokens_to_logits, params, cache, prompt_BP, mask_BP, keys_B, flags=flags,
                           buffer_length=buffer_length, cache_spec=cache_spec)
  done_B = np.zeros(prompt_BP.shape[0], bool)
  for step in range(1, max_new_tokens + 1):
    state = _decode_program(tokens_to_logits, params, state, stop_BSL, values, np.int32(step), flags=flags,
                            prompt_len=P)
    live_B = ~done_B
    token_B, done_B = map(np.asarray, jax.device_get((state.context_BT[:, P + step - 1], state.done_B)))
    yield token_B, live_B, done_B
    if done_B.all():
      return


def stop_array(stops_per_row: Sequence[Sequence[Sequence[int]]], batch_size: Optional[int] = None) -> np.ndarray:
  """Packs per-row lists of token-id stop sequences into [B, S, L] (right-aligned, -1 padding).

  S and L are rounded up to powers of two, at least 4, so that different stop lists reuse the compiled program.
  """
  batch_size = len(stops_per_row) if batch_size is None else batch_size
  S = bucket_size(max([len(s) for s in stops_per_row] + [1]), 4)
  L = bucket_size(max([len(seq) for s in stops_per_row for seq in s] + [1]), 4)
  out = np.full((batch_size, S, L), -1, np.int32)
  for b, sequences in enumerate(stops_per_row):
    for s, seq in enumerate(sequences):
      if seq:
        out[b, s, L - len(seq):] = seq
  return out


def bucket_size(n: int, minimum: int = 8) -> int:
  """The smallest power of two >= max(n, minimum)."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def model_tokens_to_logits(config: ModelConfig) -> TokensToLogits:
  """The `tokens_to_logits` of a `gptjax.model.GPT`: one function object per architecture, so programs are reused.

  Fields that do not change inference (dropout, initialisation, remat) are normalised away, so that e.g. a
  fine-tuned copy with another dropout rate shares the compiled programs. Only the last position's logits are
  computed: a prompt's full [B, P, V] logits (GBs for GPT-2 at P = 1024) would be wasted, and XLA does not remove
  them by itself (`GPT(...)(..., last_only=True)`).
  """
  return _tokens_to_logits(dataclasses.replace(
      config, decode=True, dropout_rate=0.0, attention_dropout_rate=0.0, remat=False, init_std=0.02,
      scale_residual_init=True))


@functools.lru_cache(maxsize=64)
def _tokens_to_logits(config: ModelConfig) -> TokensToLogits:
  model = GPT(config)

  def tokens_to_logits(params, tokens_BL, mask_BL, cache):
    logits_B1V, variables = model.apply({"params": params, "cache": cache}, tokens_BL, attention_mask_BL=mask_BL,
                                        last_only=True, mutable=["cache"])
    return logits_B1V[:, 0], variables["cache"]

  return tokens_to_logits

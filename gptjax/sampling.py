"""Decoding: a prompt prefill, then a `lax.while_loop` of one-token steps over a cached attention state.

Three layers, bottom up:

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
3. Requests (`generate`, `stream`, behind `LanguageModel.generate` / `.stream`): validation, tokenisation, bucketing
   of prompt length, batch and cache length to powers of two (so new prompt lengths reuse a program), stop
   sequences, and `TextStream`, an incremental detokeniser that never splits a UTF-8 character.

Ragged batches are left-padded: the cache index is shared by the batch, pad slots are masked, and each row's
positions count only its real tokens (see `gptjax/model.py`).

Random keys: row r of a request (prompt i, sample j) draws from `fold_in(fold_in(key(seed), i), j)`, and its token at
step s from `fold_in(row_key, s)`. A row's samples therefore depend on its seed, prompt index and sample index only,
not on the batch it shares or the bucket sizes.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import functools
import numbers
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model import GPT, ModelConfig, init_cache

TokensToLogits = Callable[[Any, jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
_NEG_INF = -jnp.inf
_TRACES: collections.Counter = collections.Counter()


def trace_counts() -> dict[str, int]:
  """How many times each decoding program was traced (= compiled) in this process, by program name."""
  return dict(_TRACES)


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
                            sampling.values(vocab_limit), np.int32(max_new_tokens), flags=flags, buffer_length=buffer_length,
                            cache_spec=cache_spec)
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
  S = _bucket(max([len(s) for s in stops_per_row] + [1]), 4)
  L = _bucket(max([len(seq) for s in stops_per_row for seq in s] + [1]), 4)
  out = np.full((batch_size, S, L), -1, np.int32)
  for b, sequences in enumerate(stops_per_row):
    for s, seq in enumerate(sequences):
      if seq:
        out[b, s, L - len(seq):] = seq
  return out


def _bucket(n: int, minimum: int = 8) -> int:
  """The smallest power of two >= max(n, minimum)."""
  return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def bucket_lengths(prompt_len: int, max_new_tokens: int, block_size: int) -> tuple[int, int]:
  """Static (prompt slots, cache length) for a request: powers of two where the context allows.

  Requires `prompt_len + max_new_tokens <= block_size`; guarantees prompt slots >= prompt_len and
  cache length - prompt slots >= max_new_tokens.
  """
  total = min(block_size, _bucket(prompt_len + max_new_tokens))
  return min(_bucket(prompt_len), total - max_new_tokens), total


def model_tokens_to_logits(config: ModelConfig) -> TokensToLogits:
  """The `tokens_to_logits` of a `gptjax.model.GPT`: one function object per architecture, so programs are reused.

  Fields that do not change inference (dropout, initialisation, remat) are normalised away, so that e.g. a
  fine-tuned copy with another dropout rate shares the compiled programs. Only the last position's logits are
  computed: a prompt's full [B, P, V] logits (GBs for GPT-2 at P = 1024) would be wasted, and XLA does not remove
  them by itself. The output head mirrors `GPT.__call__`'s.
  """
  return _tokens_to_logits(dataclasses.replace(
      config, decode=True, dropout_rate=0.0, attention_dropout_rate=0.0, remat=False, init_std=0.02,
      scale_residual_init=True))


@functools.lru_cache(maxsize=64)
def _tokens_to_logits(config: ModelConfig) -> TokensToLogits:
  model = GPT(config)
  dtype = jnp.dtype(config.dtype)

  def tokens_to_logits(params, tokens_BL, mask_BL, cache):
    (_, hidden_BLD), variables = model.apply({"params": params, "cache": cache}, tokens_BL, attention_mask_BL=mask_BL,
                                             return_hidden=True, mutable=["cache"])
    last_BD = hidden_BLD[:, -1]
    if config.tie_embeddings:
      logits_BV = jnp.einsum("BD,VD->BV", last_BD, params["wte"]["embedding"].astype(dtype),
                             preferred_element_type=jnp.float32)
    else:
      logits_BV = jnp.dot(last_BD, params["lm_head"]["kernel"].astype(dtype))
    return logits_BV.astype(jnp.float32), variables["cache"]

  return tokens_to_logits


# ----------------------------------------------------------------------------------------------------------------------
# 3. Requests: text in, text out.
# ----------------------------------------------------------------------------------------------------------------------


def _byte_decoder() -> dict[str, int]:
  """GPT-2's byte-level alphabet, inverted: the printable character standing for each byte -> the byte."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


@functools.lru_cache(maxsize=8)
def _token_bytes(vocab_size: int, tokenizer) -> tuple[bytes, ...]:
  del vocab_size  # Part of the cache key only: a tokenizer that grows (added tokens) gets a new table.
  inverse = _byte_decoder()
  table = [b""] * tokenizer.vocab_size
  for token, index in tokenizer.backend.get_vocab(with_added_tokens=True).items():
    # Added tokens such as <|endoftext|> are plain text that happens to use only mapped characters.
    table[index] = (bytes(inverse[c] for c in token) if all(c in inverse for c in token) else token.encode())
  return tuple(table)


class TextStream:
  """Incremental detokeniser: push generated ids, get text that is safe to show now.

  Byte-level tokenizers (GPT-2's and `train_bpe`'s) may split one character over several tokens; their bytes go
  through an incremental UTF-8 decoder, so a character is emitted only once all its bytes have arrived, and invalid
  bytes become U+FFFD exactly as `Tokenizer.decode` renders them. Other tokenizers (GPT-1, characters) produce whole
  characters; their text is the growth of `decode(prompt + generated)` past `decode(prompt)`, which also gets GPT-1's
  word spacing right.

  Stop strings: text is held back while it could be the start of one; at the first complete one, the text before it
  is emitted and the stream stops (`stopped`), the stop string itself excluded.
  """

  def __init__(self, tokenizer, prompt_ids: Sequence[int] = (), stop_strings: Sequence[str] = ()):
    self._tokenizer = tokenizer
    self._stops = tuple(stop_strings)
    self._pending = ""
    self.stopped = False
    if tokenizer.kind in ("gpt2", "bpe"):
      self._table = _token_bytes(tokenizer.vocab_size, tokenizer)
      self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    else:
      self._table = None
      self._prompt = list(prompt_ids)
      self._generated: list[int] = []
      self._prompt_text = tokenizer.decode(self._prompt)
      self._given = ""

  def push(self, ids: Sequence[int]) -> str:
    """Adds generated ids; returns the newly complete text (possibly '')."""
    return self._release(self._decode([int(i) for i in ids], final=False), final=False)

  def finish(self) -> str:
    """Ends the stream: returns the rest (an incomplete trailing character becomes U+FFFD)."""
    return self._release(self._decode([], final=True), final=True)

  def _decode(self, ids: list[int], final: bool) -> str:
    if self.stopped:
      return ""
    if self._table is not None:
      return self._utf8.decode(b"".join(self._table[i] for i in ids), final=final)
    self._generated.extend(ids)
    full = self._tokenizer.decode(self._prompt + self._generated)
    text = (full[len(self._prompt_text):] if full.startswith(self._prompt_text)
            else self._tokenizer.decode(self._generated))
    if not text.startswith(self._given):
      return ""  # Decoding changed text already shown: wait until it agrees again.
    new, self._given = text[len(self._given):], text
    return new

  def _release(self, new: str, final: bool) -> str:
    if self.stopped:
      return ""
    self._pending += new
    hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
    if hits:
      out, self._pending, self.stopped = self._pending[:min(hits)], "", True
      return out
    keep = 0
    if not final:
      for k in range(min(len(self._pending), max((len(s) for s in self._stops), default=1) - 1), 0, -1):
        if any(s.startswith(self._pending[-k:]) for s in self._stops):
          keep = k
          break
    out, self._pending = self._pending[:len(self._pending) - keep], self._pending[len(self._pending) - keep:]
    return out


@dataclasses.dataclass
class _Request:
  """A validated request, one entry per row (prompt i, sample j), rows prompt-major."""
  rows: list[list[int]]
  text: bool
  token_stops: list[list[list[int]]]
  string_stops: list[list[str]]
  seed: int
  num_samples: int


def _is_ids(x) -> bool:
  return isinstance(x, (list, tuple, np.ndarray)) and all(
      isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in x)


def _prepare(lm, prompts, max_new_tokens, sampling: SamplingParams, seed, stop, num_samples, stop_at_eos,
             truncate_prompt) -> _Request:
  config, tokenizer = lm.config, lm.tokenizer
  sampling.validate(config.vocab_size)
  if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
  if max_new_tokens >= config.block_size:
    raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context "
                     f"block_size={config.block_size}")
  if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
    raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
  if not isinstance(seed, (int, np.integer)):
    raise ValueError(f"seed must be an integer, got {seed!r}")
  eos_id = getattr(tokenizer, "eos_id", None)
  if prompts is None:  # Unconditional, as GPT-2 samples: from <|endoftext|>.
    if eos_id is None:
      raise ValueError("Unconditional generation starts from <|endoftext|>, which this model's tokenizer lacks "
                       f"({'no tokenizer' if tokenizer is None else tokenizer.kind}); give a prompt instead")
    prompts, text = [[eos_id]], tokenizer is not None
  else:
    if isinstance(prompts, (str, bytes)) or _is_ids(prompts) and len(prompts):
      raise TypeError("prompts must be a list of prompts (strings or token-id lists); for one prompt pass "
                      f"[prompt], got {type(prompts).__name__} {str(prompts)[:40]!r}")
    prompts = list(prompts)
    if not prompts:
      raise ValueError("prompts is empty: give at least one prompt (or None for an unconditional sample)")
    text = all(isinstance(p, str) for p in prompts)
    if not text and not all(_is_ids(p) for p in prompts):
      raise TypeError("prompts must be all strings or all token-id lists, got "
                      f"{sorted({type(p).__name__ for p in prompts})}")
    if text and tokenizer is None:
      raise ValueError("Text prompts need a tokenizer, and this model has none: pass token-id lists")
    text_prompts = prompts
    prompts = [tokenizer.encode(p) if text else [int(t) for t in p] for p in prompts]
    for i, p in enumerate(prompts):
      if not p:
        shown = f" ({text_prompts[i]!r})" if text else ""
        raise ValueError(f"Prompt {i}{shown} is empty: every prompt needs at least one token (pass prompts=None "
                         "for unconditional samples, which start from <|endoftext|>)")
      lm.check_token_ids(np.asarray(p))
  room = config.block_size - max_new_tokens
  for i, p in enumerate(prompts):
    if len(p) > room:
      if not truncate_prompt:
        raise ValueError(
            f"Prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that is "
            f"{len(p) + max_new_tokens} > the model's context block_size={config.block_size}. Shorten the "
            f"prompt, lower max_new_tokens, or pass truncate_prompt=True to keep its last {room} tokens")
      prompts[i] = p[-room:]
  per_prompt = _stops_per_prompt(stop, len(prompts), text, tokenizer)
  eos_stop = [[eos_id]] if stop_at_eos and eos_id is not None else []
  rows = [p for p in prompts for _ in range(num_samples)]
  token_stops = [eos_stop + per_prompt[i][0] for i in range(len(prompts)) for _ in range(num_samples)]
  string_stops = [per_prompt[i][1] for i in range(len(prompts)) for _ in range(num_samples)]
  return _Request(rows=rows, text=text, token_stops=token_stops, string_stops=string_stops, seed=int(seed),
                  num_samples=int(num_samples))


@jax.jit
def _row_keys(seed, prompt_index_R, sample_index_R):
  fold = jax.vmap(jax.random.fold_in, in_axes=(0, 0))
  keys_R = jnp.broadcast_to(jax.random.key(seed), prompt_index_R.shape)
  return fold(fold(keys_R, prompt_index_R), sample_index_R)


def row_keys(seed: int, prompt_index_R, sample_index_R) -> jax.Array:
  """The key of each row: `fold_in(fold_in(key(seed), prompt index), sample index)`."""
  return _row_keys(np.uint32(seed % 2**32), np.asarray(prompt_index_R, np.int32),
                   np.asarray(sample_index_R, np.int32))


def _stops_per_prompt(stop, num_prompts: int, text: bool, tokenizer) -> list[tuple[list[list[int]], list[str]]]:
  """Normalises `stop` to, per prompt, (token-id sequences, stop strings)."""

  def one_set(items, where: str):
    if items is None:
      return [], []
    if isinstance(items, str) or _is_ids(items) and len(items):
      items = [items]
    strings, sequences = [], []
    for item in items:
      if isinstance(item, str):
        if not item:
          raise ValueError(f"{where}: a stop string is empty")
        if not text:
          raise ValueError(f"{where}: stop string {item!r} needs text prompts; with token-id prompts give stop "
                           "sequences as token-id lists")
        strings.append(item)
        sequences.append(tokenizer.encode(item))
      elif _is_ids(item) and len(item):
        sequences.append([int(t) for t in item])
      else:
        raise ValueError(f"{where}: a stop must be a non-empty string or token-id list, got {item!r} (per-prompt "
                         f"stops need one list or None per prompt: {num_prompts} here)")
    return sequences, strings

  if (isinstance(stop, (list, tuple)) and len(stop) == num_prompts and stop
      and all(x is None or isinstance(x, (list, tuple)) and not _is_ids(x) for x in stop)):
    return [one_set(x, f"stop[{i}]") for i, x in enumerate(stop)]  # One set per prompt.
  shared = one_set(stop, "stop")
  return [shared] * num_prompts


def _strip_token_stop(ids: list[int], stops: Sequence[Sequence[int]]) -> list[int]:
  """`ids` without the stop sequence it ends with (the longest, which began first, when several match)."""
  for seq in sorted(stops, key=len, reverse=True):
    if seq and len(ids) >= len(seq) and ids[len(ids) - len(seq):] == list(seq):
      return ids[:len(ids) - len(seq)]
  return ids


def _batch_arrays(lm, request: _Request, max_new_tokens: int):
  """Left-padded, bucketed arrays for a request; the batch is padded to a power of two with copies of row 0."""
  R = len(request.rows)
  B = _bucket(R, 1)
  longest = max(len(r) for r in request.rows)
  P, T = bucket_lengths(longest, max_new_tokens, lm.config.block_size)
  prompt_BP = np.zeros((B, P), np.int32)
  mask_BP = np.zeros((B, P), bool)
  for b in range(B):
    row = request.rows[b if b < R else 0]
    prompt_BP[b, P - len(row):] = row
    mask_BP[b, P - len(row):] = True
  # Padding rows repeat row 0, key included.
  prompt_index_B, sample_index_B = np.divmod(np.where(np.arange(B) < R, np.arange(B), 0), request.num_samples)
  keys_B = row_keys(request.seed, prompt_index_B, sample_index_B)
  stops = request.token_stops + [request.token_stops[0]] * (B - R)
  return prompt_BP, mask_BP, keys_B, stop_array(stops), _cache_shapes(lm.config, B, T), T - P


@functools.lru_cache(maxsize=64)
def _cache_shapes(config: ModelConfig, batch_size: int, max_length: int):
  return jax.eval_shape(lambda: init_cache(config, batch_size, max_length))


def _vocab_limit(lm) -> Optional[int]:
  return None if lm.tokenizer is None else lm.tokenizer.vocab_size


def generate(lm, prompts, max_new_tokens: int, sampling: SamplingParams = SamplingParams(), *, seed: int = 0,
             stop=None, num_samples: int = 1, stop_at_eos: bool = True, truncate_prompt: bool = False,
             return_finish_reasons: bool = False):
  """`LanguageModel.generate` (see there). With `return_finish_reasons`, also returns 'stop' or 'length' per row."""
  request = _prepare(lm, prompts, max_new_tokens, sampling, seed, stop, num_samples, stop_at_eos, truncate_prompt)
  prompt_BP, mask_BP, keys_B, stop_BSL, cache, buffer_length = _batch_arrays(lm, request, max_new_tokens)
  result = decode(model_tokens_to_logits(lm.config), lm.params, cache, prompt_BP, mask_BP, keys_B, max_new_tokens,
                  sampling, stop_BSL, buffer_length=buffer_length, vocab_limit=_vocab_limit(lm))
  outputs, reasons = [], []
  for r, row in enumerate(request.rows):
    ids = result.tokens_BN[r, :result.num_tokens_B[r]].tolist()
    stopped = bool(result.stopped_B[r])
    if stopped:
      ids = _strip_token_stop(ids, request.token_stops[r])
    if request.text:
      stream = TextStream(lm.tokenizer, row, request.string_stops[r])
      outputs.append(stream.push(ids) + stream.finish())
      stopped = stopped or stream.stopped
    else:
      outputs.append(ids)
    reasons.append("stop" if stopped else "length")
  return (outputs, reasons) if return_finish_reasons else outputs


def stream(lm, prompt, max_new_tokens: int, sampling: SamplingParams = SamplingParams(), *, seed: int = 0,
           stop=None, stop_at_eos: bool = True, truncate_prompt: bool = False) -> Iterator[Union[str, list[int]]]:
  """`LanguageModel.stream` (see there): the first sample of `generate([prompt], ...)`, piece by piece."""
  request = _prepare(lm, None if prompt is None else [prompt], max_new_tokens, sampling, seed,
                     None if stop is None else [stop], 1, stop_at_eos, truncate_prompt)
  prompt_BP, mask_BP, keys_B, stop_BSL, cache, buffer_length = _batch_arrays(lm, request, max_new_tokens)
  token_stops = request.token_stops[0]
  # A multi-token stop sequence is recognised only once complete: hold back enough tokens to strip it then.
  hold = max([len(s) for s in token_stops] + [1]) - 1
  text = TextStream(lm.tokenizer, request.rows[0], request.string_stops[0]) if request.text else None
  pending: list[int] = []
  steps = decode_stream(model_tokens_to_logits(lm.config), lm.params, cache, prompt_BP, mask_BP, keys_B,
                        max_new_tokens, sampling, stop_BSL, buffer_length=buffer_length, vocab_limit=_vocab_limit(lm))
  for token_B, _, done_B in steps:
    pending.append(int(token_B[0]))
    if done_B[0]:
      pending = _strip_token_stop(pending, token_stops)
      release, pending = pending, []
    else:
      release, pending = pending[:len(pending) - hold], pending[len(pending) - hold:]
    if text is None:
      if release:
        yield release
    else:
      piece = text.push(release)
      if piece:
        yield piece
      if text.stopped:
        return
    if done_B[0]:
      break
  if text is None:
    if pending:
      yield pending
  else:
    piece = text.push(pending) + text.finish()
    if piece:
      yield piece

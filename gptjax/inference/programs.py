"""The compiled inference programs behind `gptjax/inference/engine.py`, as pure jitted functions.

Module level, keyed by the (normalised) model config and shapes, so engines of one architecture share them; each
counts its traces (= compilations) in `trace_counts()`. The slot programs (`insert_program`, `decode_program`,
`release_program`) take and return the engine's whole device state, `SlotState`, donated so that it is updated in
place.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gptjax import dots
from gptjax import model as model_lib
from gptjax.inference import quantize  # Weight-only int8 / int4: dequantized inside each program.
from gptjax.inference import sampling
from gptjax.model import GPT, ModelConfig

_TRACES: collections.Counter = collections.Counter()
_NEG_INF = -jnp.inf


def trace_counts() -> dict[str, int]:
  """How many times each inference program was traced (= compiled) in this process, by program name."""
  return dict(_TRACES)


def bucket(n: int, minimum: int = 8, cap: Optional[int] = None) -> int:
  """The shape-bucketing policy: the smallest power of two >= max(n, minimum), at most `cap`."""
  size = max(minimum, 1 << max(0, int(n) - 1).bit_length())
  return size if cap is None else min(size, cap)


def inference_config(config: ModelConfig) -> ModelConfig:
  """`config` with the fields that do not change inference normalised, so that models share compiled programs."""
  return dataclasses.replace(config, decode=False, dropout_rate=0.0, attention_dropout_rate=0.0, remat=False,
                             init_std=0.02, scale_residual_init=True, weight_left=False)




# Programs over at most this many rows (batch x tokens) read the kernels stored transposed on CPUs.
WEIGHT_LEFT_ROWS = 64


def weight_left_params(params) -> Optional[Any]:
  """A copy of `params` with the layers' kernels stored [F..., C...] for the weight-left products of programs over
  at most `WEIGHT_LEFT_ROWS` rows (`gptjax/dots.py`: at 8-32 rows ~1.5-2x faster per matmul, at 512 and more no
  faster), or None where they do not apply: other backends than CPUs, and quantized weights (dequantized inside
  each program in the usual layout)."""
  if not dots.use_for_backend() or quantize.is_quantized(params):
    return None
  return _to_weight_left(params)


_to_weight_left = jax.jit(dots.to_weight_left)


def _model_params(config: ModelConfig, params):
  """Inside a program: the float parameters in the model's own layout."""
  params = quantize.dequantize_tree(params)  # int8/int4 weights become float inside the program.
  return dots.from_weight_left(params) if config.weight_left else params


@functools.partial(jax.jit, static_argnames=("config", "logits", "hidden", "attention"))
def forward_program(config, params, ids_BT, mask_BT, ablation, *, logits: bool, hidden: Optional[str],
                     attention: bool):
  _TRACES["forward"] += 1
  params = _model_params(config, params)
  mutable = (["hidden_states"] if hidden == "all" else []) + (["intermediates"] if attention else [])
  outputs = GPT(config).apply({"params": params}, ids_BT, attention_mask_BL=mask_BT, return_hidden=True,
                              ablation=ablation, mutable=mutable or False)
  (logits_BTV, final_BTD), state = outputs if mutable else (outputs, {})
  result = {}
  if logits:
    result["logits"] = logits_BTV
  if hidden == "all":
    result["hidden"] = jnp.stack(state["hidden_states"]["residual"]).astype(jnp.float32)
  if hidden == "final":
    result["final"] = final_BTD.astype(jnp.float32)
  if attention:
    result["attention"] = jnp.stack([state["intermediates"][f"h_{i}"]["attn"]["attention_weights"][0]
                                     for i in range(config.num_layers)])
  return result


@functools.partial(jax.jit, static_argnames=("config",))
def score_program(config, params, ids_BT, targets_BT, mask_BT):
  _TRACES["score"] += 1
  params = _model_params(config, params)
  logits_BTV = GPT(config).apply({"params": params}, ids_BT, attention_mask_BL=mask_BT)
  target_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  max_BT = logits_BTV.max(axis=-1)
  logprob_BT = target_BT - max_BT - jnp.log(jnp.exp(logits_BTV - max_BT[..., None]).sum(-1))
  # Greedy decoding would choose the target: its logit is the largest (an argmax over V is ~2x slower on CPU).
  return jnp.where(mask_BT, logprob_BT, 0.0), (target_BT >= max_BT) & mask_BT


@functools.lru_cache(maxsize=64)
def _cache_shapes(config: ModelConfig, batch_size: int, length: int):
  return jax.eval_shape(lambda: model_lib.init_cache(config, batch_size, length))


def _zeros_cache(config: ModelConfig, batch_size: int, length: int):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _cache_shapes(config, batch_size, length))


@functools.partial(jax.jit, static_argnames=("config",))
def prefill_program(config, params, tokens_BP, mask_BP):
  _TRACES["prefill"] += 1
  params = _model_params(config, params)
  B, P = tokens_BP.shape
  tokens_to_logits = sampling.model_tokens_to_logits(config)
  logits_BV, cache = tokens_to_logits(params, tokens_BP, mask_BP, _zeros_cache(config, B, P))
  return cache, logits_BV


class SlotState(NamedTuple):
  """The engine's device state: the cache and every request's settings and progress, one row per slot (N)."""
  cache: Any
  logits_NV: jax.Array  # float32 logits of each slot's next token.
  active_N: jax.Array  # bool: the slot holds a request that has not finished.
  temperature_N: jax.Array
  top_k_N: jax.Array
  top_p_N: jax.Array
  repetition_N: jax.Array
  presence_N: jax.Array
  frequency_N: jax.Array
  seed_N: jax.Array  # uint32
  stream_N: jax.Array
  generated_N: jax.Array  # Tokens generated so far (the step of the next draw).
  max_tokens_N: jax.Array
  logprobs_N: jax.Array
  stop_NSL: jax.Array  # Stop sequences, right-aligned, -1 padding.
  window_NL: jax.Array  # The last generated tokens (-1 before the first), matched against the stops.
  seen_NV: jax.Array  # bool: tokens of the prompt or generated (repetition penalty).
  counts_NV: jax.Array  # int32: times each token was generated (presence / frequency penalties).


def empty_state(config: ModelConfig, num_slots: int, max_length: int) -> SlotState:
  N, V = num_slots, config.vocab_size
  zeros = lambda dtype: jnp.zeros((N,), dtype)
  return SlotState(
      cache=model_lib.init_cache(config, N, max_length), logits_NV=jnp.zeros((N, V), jnp.float32),
      active_N=zeros(jnp.bool_), temperature_N=zeros(jnp.float32), top_k_N=zeros(jnp.int32),
      top_p_N=jnp.ones((N,), jnp.float32), repetition_N=jnp.ones((N,), jnp.float32), presence_N=zeros(jnp.float32),
      frequency_N=zeros(jnp.float32), seed_N=zeros(jnp.uint32), stream_N=zeros(jnp.int32),
      generated_N=zeros(jnp.int32), max_tokens_N=zeros(jnp.int32), logprobs_N=zeros(jnp.int32),
      stop_NSL=jnp.full((N, sampling.MAX_STOP_SEQUENCES, sampling.MAX_STOP_LENGTH), -1, jnp.int32),
      window_NL=jnp.full((N, sampling.MAX_STOP_LENGTH), -1, jnp.int32), seen_NV=jnp.zeros((N, V), jnp.bool_),
      counts_NV=jnp.zeros((N, V), jnp.int32))


@functools.partial(jax.jit, donate_argnames=("state",))
def insert_program(state: SlotState, prefix_cache, row, logits_V, tokens_P, mask_P, slot, settings: dict):
  """Puts row `row` of a prefilled batch into `slot`: its cache shifted so that the prompt starts at position 0."""
  _TRACES["insert"] += 1
  P = tokens_P.shape[0]
  n = mask_P.sum(dtype=jnp.int32)

  def put(path, slots, prefix):
    name = path[-1].key
    if name in ("cached_key", "cached_value", "cached_key_scale", "cached_value_scale"):  # (scales: int8 cache)
      # The prompt was left-padded to P: rolling by P - n moves its n tokens to the front; the padding after them
      # is marked invalid and overwritten by the generated tokens.
      shifted = jnp.roll(jax.lax.dynamic_index_in_dim(prefix, row, keepdims=False), -(P - n), axis=0)
      return jax.lax.dynamic_update_slice_in_dim(slots, shifted[None].astype(slots.dtype), slot, axis=0)
    if name == "cached_valid":
      return slots.at[slot].set(jnp.arange(slots.shape[1]) < n)
    if name in ("index", "num_valid"):
      return slots.at[slot].set(n)
    raise ValueError(f"Unknown cache variable {jax.tree_util.keystr(path)}")

  V = state.logits_NV.shape[1]
  seen_V = jnp.zeros((V,), jnp.bool_).at[jnp.where(mask_P, tokens_P, V)].set(True, mode="drop")
  set_row = lambda x, value: x.at[slot].set(value)
  return state._replace(
      cache=jax.tree_util.tree_map_with_path(put, state.cache, prefix_cache),
      logits_NV=set_row(state.logits_NV, logits_V), active_N=set_row(state.active_N, True),
      temperature_N=set_row(state.temperature_N, settings["temperature"]),
      top_k_N=set_row(state.top_k_N, settings["top_k"]), top_p_N=set_row(state.top_p_N, settings["top_p"]),
      repetition_N=set_row(state.repetition_N, settings["repetition_penalty"]),
      presence_N=set_row(state.presence_N, settings["presence_penalty"]),
      frequency_N=set_row(state.frequency_N, settings["frequency_penalty"]),
      seed_N=set_row(state.seed_N, settings["seed"]), stream_N=set_row(state.stream_N, settings["stream_index"]),
      generated_N=set_row(state.generated_N, 0), max_tokens_N=set_row(state.max_tokens_N, settings["max_tokens"]),
      logprobs_N=set_row(state.logprobs_N, settings["logprobs"]), stop_NSL=set_row(state.stop_NSL, settings["stop"]),
      window_NL=set_row(state.window_NL, -1), seen_NV=set_row(state.seen_NV, seen_V),
      counts_NV=set_row(state.counts_NV, 0))


@functools.partial(jax.jit, donate_argnames=("state",))
def release_program(state: SlotState, slot):
  _TRACES["release"] += 1
  return state._replace(active_N=state.active_N.at[slot].set(False))


class StepOutput(NamedTuple):
  token_N: jax.Array
  logprob_N: jax.Array
  top_ids_NK: jax.Array
  top_logprobs_NK: jax.Array
  live_N: jax.Array  # The slot produced a token this step.
  finish_N: jax.Array  # 0 going on, 1 stop, 2 length.


def _decode_step(config: ModelConfig, vocab_limit: int, params, state: SlotState) -> tuple[SlotState, StepOutput]:
  """Chooses a token in every active slot from its logits, records it, and feeds it to get the next logits."""
  N, V = state.logits_NV.shape
  live_N = state.active_N
  # Ids the tokenizer cannot decode (nanoGPT pads GPT-2's vocabulary) are never chosen nor reported.
  raw_NV = jnp.where(jnp.arange(V) < vocab_limit, state.logits_NV, _NEG_INF)
  # Rows without a request get neutral settings, so that they never switch on the optional branches below.
  repetition_N = jnp.where(live_N, state.repetition_N, 1.0)
  presence_N = jnp.where(live_N, state.presence_N, 0.0)
  frequency_N = jnp.where(live_N, state.frequency_N, 0.0)
  penalised_NV = jax.lax.cond(
      jnp.any((repetition_N != 1) | (presence_N != 0) | (frequency_N != 0)),
      lambda x: sampling.apply_penalties_per_row(x, state.seen_NV, state.counts_NV, repetition_N, presence_N,
                                                 frequency_N),
      lambda x: x, raw_NV)
  key_of = lambda seed, stream, step: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), step)
  keys_N = jax.vmap(key_of)(state.seed_N, state.stream_N, state.generated_N)
  token_N = sampling.choose_tokens_per_row(
      keys_N, penalised_NV, jnp.where(live_N, state.temperature_N, 0.0), jnp.where(live_N, state.top_k_N, 0),
      jnp.where(live_N, state.top_p_N, 1.0))

  logprobs_NV = jax.nn.log_softmax(raw_NV, axis=-1)
  logprob_N = jnp.take_along_axis(logprobs_NV, token_N[:, None], axis=1)[:, 0]
  K = min(sampling.MAX_TOP_LOGPROBS, V)
  top_logprobs_NK, top_ids_NK = jax.lax.cond(
      jnp.any(live_N & (state.logprobs_N > 0)), lambda x: tuple(jax.lax.top_k(x, K)),
      lambda x: (jnp.zeros((N, K), jnp.float32), jnp.zeros((N, K), jnp.int32)), logprobs_NV)

  rows_N = jnp.arange(N)
  window_NL = jnp.where(live_N[:, None], jnp.concatenate([state.window_NL[:, 1:], token_N[:, None]], axis=1),
                        state.window_NL)
  generated_N = state.generated_N + live_N
  stop_N = live_N & sampling.ends_with_stop(window_NL, state.stop_NSL)
  length_N = live_N & ~stop_N & (generated_N >= state.max_tokens_N)
  active_N = live_N & ~stop_N & ~length_N
  params = _model_params(config, params)  # In the loop body: the loop carries int8 (or the transposed kernels).
  # The next logits of every slot in one fixed-shape call; finished and empty slots feed an invalid token (their
  # rows are reset when a request is inserted).
  logits_NV, cache = sampling.model_tokens_to_logits(config)(
      params, jnp.where(active_N, token_N, 0)[:, None], active_N[:, None], state.cache)
  state = state._replace(
      cache=cache, logits_NV=logits_NV.astype(jnp.float32), active_N=active_N, generated_N=generated_N,
      window_NL=window_NL, seen_NV=state.seen_NV.at[rows_N, token_N].max(live_N),
      counts_NV=state.counts_NV.at[rows_N, token_N].add(live_N.astype(jnp.int32)))
  finish_N = jnp.where(stop_N, 1, jnp.where(length_N, 2, 0)).astype(jnp.int32)
  return state, StepOutput(token_N, logprob_N, top_ids_NK, top_logprobs_NK, live_N, finish_N)


@dots.jit_with_cpu_options(dots.DECODE_CPU_COMPILER_OPTIONS, static_argnames=("config", "vocab_limit", "buffer_steps"),
                           donate_argnames=("state",))
def decode_program(config, params, state: SlotState, max_steps, until_finish, *, vocab_limit: int,
                    buffer_steps: int):
  """Up to `max_steps` (<= buffer_steps) decode steps in one program: it stops early when no slot is active, or,
  with `until_finish`, once some request finished (requests are waiting for its slot)."""
  _TRACES["decode"] += 1
  N, T, K = state.active_N.shape[0], buffer_steps, min(sampling.MAX_TOP_LOGPROBS, state.logits_NV.shape[1])
  buffers = StepOutput(jnp.zeros((N, T), jnp.int32), jnp.zeros((N, T), jnp.float32), jnp.zeros((N, T, K), jnp.int32),
                        jnp.zeros((N, T, K), jnp.float32), jnp.zeros((N, T), jnp.bool_), jnp.zeros((N, T), jnp.int32))

  def cond(carry):
    t, s, _, finished = carry
    return (t < max_steps) & jnp.any(s.active_N) & ~(until_finish & finished)

  def body(carry):
    t, s, out, finished = carry
    s, step = _decode_step(config, vocab_limit, params, s)
    out = jax.tree.map(lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x[:, None], t, axis=1), out, step)
    return t + 1, s, out, finished | jnp.any(step.finish_N > 0)

  steps, state, buffers, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), state, buffers, jnp.bool_(False)))
  return state, buffers, steps

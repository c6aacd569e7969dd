"""The inference engine: every compiled inference program of a loaded model, and a slot-based KV cache.

One `Engine` per (model, slot count, cache length) owns:
  - `forward`: logits, the residual stream (`hidden_states`), attention probabilities and ablations, for
    `LanguageModel.logits`, probing, the explorer and fine-tuned heads; `score`: log-probabilities of given targets
    (evaluation, echo). The log-softmax runs inside the program, so [B, T, V] logits never reach the host.
  - the slot half, as JetStream's `prefill` / `insert` / `generate` and MaxText's `maxengine`: `num_slots` cache
    rows, each with its own length, positions and write index (`gptjax/model.py`). `prefill` runs one prompt
    (left-padded to a bucketed length) into a cache of its own; `insert` copies it into a free slot, shifted so
    that the prompt starts at position 0, with the request's sampling settings; `step` runs one fixed-shape decode
    step over all slots (or several in one `lax.while_loop`), and a finished slot stops at once; `release` frees a
    slot (a cancelled request).
  - `trace_counts()`: how often each program was traced (= compiled), by name. The programs themselves are pure
    jitted functions in `gptjax/inference/programs.py`.

Shapes are bucketed by one policy (`bucket`: powers of two, at least 8 tokens, capped by the context), and every
per-request setting is an array over slots (`gptjax/inference/sampling.py`), so prompt lengths, settings and the mix
of requests in the batch do not recompile anything after warm-up.

`Scheduler` is the synchronous host loop over an engine (the server runs it in a thread): requests wait in a queue,
join free slots between decode steps, and leave as soon as they finish or are cancelled; each step reports an
`Event` per generated token. `generate` / `stream` (behind `LanguageModel.generate` / `.stream`) run a list of
requests through a scheduler, so a list longer than the slot count streams through the slots.

Random draws: request r's token at step s uses `fold_in(fold_in(key(seed_r), stream_index_r), s)`, and every
transformation of a row depends on that row only, so a request gets the same tokens alone or among others.
"""

from __future__ import annotations

import collections
import dataclasses
import weakref
from typing import Any, Iterator, Optional, Sequence, Union

import jax
import numpy as np

from gptjax import model as model_lib
from gptjax.inference import generation
from gptjax.inference import programs
from gptjax.inference import sampling
from gptjax.inference.programs import bucket, inference_config, trace_counts  # noqa: F401  (part of this API)
from gptjax.inference.sampling import SamplingSettings
from gptjax.model import ModelConfig

_FINISH_REASONS = (None, "stop", "length")
# lm.generate sizes its engine to the request: slots for up to this many rows at once, the rest stream through.
MAX_GENERATE_SLOTS = 32
# Decode steps per program call in lm.generate (one host round trip per call).
MAX_STEPS_PER_CALL = 64


# ----------------------------------------------------------------------------------------------------------------------
# The engine.
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Forward:
  """What `Engine.forward` returns (numpy, float32).

  Attributes:
    logits_BTV: Next-token logits (None with `logits=False`).
    hidden_NBTD: The residual stream, N = num_layers + 1: the embeddings, then each block's output, before `ln_f`
      (with `hidden_states=True`).
    attention_NBHTT: Each layer's attention probabilities, rows = queries (with `attention=True`).
    final_BTD: The last hidden states after `ln_f`, what the output head reads (with `hidden_states='final'`).
  """
  logits_BTV: Optional[np.ndarray] = None
  hidden_NBTD: Optional[np.ndarray] = None
  attention_NBHTT: Optional[np.ndarray] = None
  final_BTD: Optional[np.ndarray] = None


@dataclasses.dataclass
class Score:
  """What `Engine.score` returns: per-token log-probabilities of the targets (0 at masked positions) and whether
  greedy decoding would have chosen each target."""
  logprob_BT: np.ndarray
  greedy_BT: np.ndarray


@dataclasses.dataclass
class Prefix:
  """A prefilled request, ready for `Engine.insert`: row `row` of a prefill's cache (left-padded prompt) and its
  next-token logits."""
  cache: Any
  logits_V: jax.Array
  tokens_P: np.ndarray
  mask_P: np.ndarray
  settings: SamplingSettings
  num_tokens: int
  row: int = 0


@dataclasses.dataclass
class StepResult:
  """What `Engine.step` returns: T steps (1 unless asked for more) over all N slots, numpy.

  Attributes:
    tokens_NT: The chosen tokens; meaningful where `live_NT`.
    logprobs_NT: Their log-probabilities under the model (log-softmax of its logits over the decodable ids).
    top_ids_NTK, top_logprobs_NTK: The K = MAX_TOP_LOGPROBS most likely tokens, most likely first (filled only while
      some slot asks for logprobs; each request reads its own first `logprobs`).
    live_NT: The slot produced a token at that step.
    finish_NT: 0 = going on, 1 = stop (a stop sequence, which is the last tokens reported), 2 = length.
  """
  tokens_NT: np.ndarray
  logprobs_NT: np.ndarray
  top_ids_NTK: np.ndarray
  top_logprobs_NTK: np.ndarray
  live_NT: np.ndarray
  finish_NT: np.ndarray

  @property
  def num_steps(self) -> int:
    return self.tokens_NT.shape[1]


def _check_ids(lm_config: ModelConfig, ids, name: str = "token_ids") -> np.ndarray:
  ids = np.asarray(ids)
  if ids.ndim == 1:
    ids = ids[None]
  if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"{name} must be a non-empty [T] or [B, T] array of ints, got shape {ids.shape} "
                     f"dtype {ids.dtype}")
  if ids.shape[1] > lm_config.block_size:
    raise ValueError(f"Sequence of {ids.shape[1]} tokens exceeds the model's context "
                     f"block_size={lm_config.block_size}")
  check_vocabulary(lm_config, ids)
  return ids


def check_vocabulary(lm_config: ModelConfig, ids: np.ndarray) -> None:
  """Raises ValueError naming the first id outside [0, vocab_size)."""
  bad = (ids < 0) | (ids >= lm_config.vocab_size)
  if bad.any():
    raise ValueError(f"Token id {int(ids[bad].flat[0])} is outside the model's vocabulary "
                     f"[0, {lm_config.vocab_size})")


class Engine:
  """The compiled inference programs of one model, and `num_slots` KV-cache rows of `max_length` tokens.

  The slot cache is allocated on the first `insert`, so an engine used only for `forward` / `score` costs nothing.
  Not thread-safe, and its slots serve one `Scheduler` at a time (e.g. the server's, in one thread): a second one
  is refused while the first still has requests.
  """

  def __init__(self, lm, *, num_slots: int = 8, max_length: Optional[int] = None):
    """Args:
      lm: A `LanguageModel` (config, params and tokenizer; `lm.params` is read again when it changes).
      num_slots: Requests decoded together.
      max_length: Cache length per slot: prompt + generated tokens (default: the model's context).
    """
    self._driver = None  # weakref to the Scheduler using the slots (`Scheduler.__init__` refuses a second one).
    block_size = lm.config.block_size
    max_length = block_size if max_length is None else max_length
    if not isinstance(num_slots, int) or num_slots < 1:
      raise ValueError(f"num_slots must be a positive integer, got {num_slots!r}")
    if not isinstance(max_length, int) or not 2 <= max_length <= block_size:
      raise ValueError(f"max_length must be an integer in [2, block_size={block_size}], got {max_length!r}")
    self.lm = lm
    self.config = inference_config(lm.config)
    self.num_slots = num_slots
    self.max_length = max_length
    tokenizer = getattr(lm, "tokenizer", None)
    self.vocab_limit = self.config.vocab_size if tokenizer is None else min(tokenizer.vocab_size,
                                                                             self.config.vocab_size)
    self._state: Optional[programs.SlotState] = None
    self._params_source, self._params = None, None
    self._transposed_source, self._transposed, self._weight_left_config = None, None, None

  def __repr__(self) -> str:
    return f"Engine(num_slots={self.num_slots}, max_length={self.max_length}, {self.lm!r})"

  @property
  def params(self):
    """The model's parameters on the device (moved once, not at every call)."""
    if self.lm.params is not self._params_source:
      self._params_source, self._params = self.lm.params, jax.device_put(self.lm.params)
    return self._params

  def _layout(self, rows: int) -> tuple[ModelConfig, Any]:
    """A program's config and parameters for `rows` rows: up to `programs.WEIGHT_LEFT_ROWS`, where it applies, a
    copy of the kernels stored transposed (`programs.weight_left_params`), made once per parameter tree and kept
    (about +68% of GPT-2 small's weight bytes: its kernels are 85M of 124M parameters)."""
    params = self.params
    if params is not self._transposed_source:
      self._transposed_source, self._transposed = params, programs.weight_left_params(params)
      self._weight_left_config = dataclasses.replace(self.config, weight_left=True)
    if rows > programs.WEIGHT_LEFT_ROWS or self._transposed is None:
      return self.config, params
    return self._weight_left_config, self._transposed

  def trace_counts(self) -> dict[str, int]:
    """Compilations of each inference program so far in this process (programs are shared between engines)."""
    return trace_counts()

  # ---- Forward passes. -------------------------------------------------------------------------------------------

  def _padded(self, ids_BT, mask_BT, extra=()):
    """Pads rows to a power of two and length to the bucket (right padding, masked; padding rows all real)."""
    ids = _check_ids(self.lm.config, ids_BT)
    B, T = ids.shape
    mask = np.ones(ids.shape, bool) if mask_BT is None else np.asarray(mask_BT).astype(bool).reshape(
        ids.shape if np.ndim(mask_BT) == 2 else (1, -1))
    if mask.shape != ids.shape:
      raise ValueError(f"attention_mask shape {mask.shape} does not match token_ids shape {ids.shape}")
    Bp, Tp = bucket(B, 1), bucket(T, 8, self.config.block_size)
    ids_p, mask_p = np.zeros((Bp, Tp), np.int32), np.zeros((Bp, Tp), bool)
    ids_p[:B, :T], mask_p[:B, :T], mask_p[B:] = ids, mask, True
    others = []
    for x in extra:
      x = np.asarray(x).reshape(ids.shape)
      padded = np.zeros((Bp, Tp), x.dtype)
      padded[:B, :T] = x
      others.append(padded)
    return (B, T), ids_p, mask_p, others

  def forward(self, ids_BT, mask_BT=None, *, logits: bool = True, hidden_states: Union[bool, str] = False,
              attention: bool = False, ablations: Sequence[tuple] = ()) -> Forward:
    """One forward pass over [B, T] (or [T]) token ids, bucketed and compiled once per bucket and options.

    Args:
      ids_BT: int token ids.
      mask_BT: Optional 1/0 marking real tokens (left padding for ragged batches).
      logits: Return the logits (False saves [B, T, V] when only hidden states are wanted).
      hidden_states: True: the residual stream of every layer (`Forward.hidden_NBTD`); 'final': only the last
        hidden states after `ln_f` (`Forward.final_BTD`).
      attention: Return every layer's attention probabilities.
      ablations: ("head", layer, head) / ("attn", layer) / ("mlp", layer): that output zeroed (see
        `gptjax.model.ablation_masks`); one compiled program serves every ablation.
    """
    if hidden_states not in (False, True, "final"):
      raise ValueError(f"hidden_states must be False, True or 'final', got {hidden_states!r}")
    (B, T), ids, mask, _ = self._padded(ids_BT, mask_BT)
    ablation = model_lib.ablation_masks(self.config, tuple(ablations)) if ablations else None
    hidden = {False: None, True: "all", "final": "final"}[hidden_states]
    config, params = self._layout(ids.size)
    out = jax.device_get(programs.forward_program(config, params, ids, mask, ablation, logits=bool(logits),
                                          hidden=hidden, attention=bool(attention)))
    return Forward(
        logits_BTV=out["logits"][:B, :T] if "logits" in out else None,
        hidden_NBTD=out["hidden"][:, :B, :T] if "hidden" in out else None,
        attention_NBHTT=out["attention"][:, :B, :, :T, :T] if "attention" in out else None,
        final_BTD=out["final"][:B, :T] if "final" in out else None)

  def score(self, ids_BT, targets_BT, mask_BT=None) -> Score:
    """Log-probabilities of `targets_BT` (the token after each input position) under the model, per token.

    Args:
      ids_BT: int inputs [B, T] (or [T]).
      targets_BT: int targets, same shape: targets[b, t] is scored given ids[b, :t + 1].
      mask_BT: Optional 1/0: real input positions; masked positions score 0.
    """
    (B, T), ids, mask, (targets,) = self._padded(ids_BT, mask_BT, (targets_BT,))
    _check_ids(self.lm.config, targets[:B, :T], "targets")
    config, params = self._layout(ids.size)
    logprob, greedy = jax.device_get(programs.score_program(config, params, ids, targets.astype(np.int32), mask))
    return Score(np.asarray(logprob[:B, :T]), np.asarray(greedy[:B, :T]))

  # ---- Slots. ----------------------------------------------------------------------------------------------------

  def check_request(self, prompt_ids: Sequence[int], settings: SamplingSettings) -> None:
    """Raises ValueError naming what is wrong with a request (settings, token ids, length)."""
    if not isinstance(settings, SamplingSettings):
      raise TypeError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
    settings.validate(self.config.vocab_size)
    if len(prompt_ids) == 0:
      raise ValueError("prompt_ids is empty: a request needs at least one prompt token")
    _check_ids(self.lm.config, np.asarray(prompt_ids, np.int64), "prompt_ids")
    if len(prompt_ids) + settings.max_tokens > self.max_length:
      raise ValueError(f"max_tokens: the prompt's {len(prompt_ids)} tokens + max_tokens={settings.max_tokens} = "
                       f"{len(prompt_ids) + settings.max_tokens} exceed the engine's max_length={self.max_length}")

  def prefill(self, prompt_ids: Sequence[int], settings: SamplingSettings) -> Prefix:
    """Runs a prompt into a cache of its own (length bucketed: one compiled program per bucket)."""
    return self.prefill_batch([prompt_ids], [settings])[0]

  def prefill_batch(self, prompts: Sequence[Sequence[int]], settings: Sequence[SamplingSettings]) -> list[Prefix]:
    """`prefill` of several prompts in one forward pass (rows and length bucketed), one `Prefix` per prompt.

    Faster than one call per prompt, but a row's logits may then differ from its own prefill's in the last bits
    (other matmul shapes); `Scheduler` prefills one request at a time unless told otherwise.
    """
    for prompt_ids, s in zip(prompts, settings, strict=True):
      self.check_request(prompt_ids, s)
    P = bucket(max(len(p) for p in prompts), 8, self.max_length)
    B = bucket(len(prompts), 1)
    tokens, mask = np.zeros((B, P), np.int32), np.zeros((B, P), bool)
    for b in range(B):
      prompt_ids = prompts[b if b < len(prompts) else 0]  # Padding rows repeat the first prompt.
      tokens[b, P - len(prompt_ids):], mask[b, P - len(prompt_ids):] = prompt_ids, True
    cache, logits_BV = programs.prefill_program(*self._layout(tokens.size), tokens, mask)
    return [Prefix(cache, logits_BV[b], tokens[b], mask[b], settings[b], len(prompts[b]), b)
            for b in range(len(prompts))]

  def _ensure_state(self) -> programs.SlotState:
    if self._state is None:
      self._state = programs.empty_state(dataclasses.replace(self.config, decode=True), self.num_slots, self.max_length)
    return self._state

  def insert(self, prefix: Prefix, slot: int) -> None:
    """Puts a prefilled request into `slot` (any request there is replaced); it decodes from the next `step`."""
    if not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.num_slots:
      raise ValueError(f"slot must be in [0, num_slots={self.num_slots}), got {slot!r}")
    s = prefix.settings
    settings = dict(
        temperature=np.float32(s.temperature), top_k=np.int32(s.top_k), top_p=np.float32(s.top_p),
        repetition_penalty=np.float32(s.repetition_penalty), presence_penalty=np.float32(s.presence_penalty),
        frequency_penalty=np.float32(s.frequency_penalty), seed=np.uint32(s.seed % 2**32),
        stream_index=np.int32(s.stream_index), max_tokens=np.int32(s.max_tokens), logprobs=np.int32(s.logprobs),
        stop=sampling.stop_sequences_array(s.stop_token_ids))
    self._state = programs.insert_program(self._ensure_state(), prefix.cache, np.int32(prefix.row), prefix.logits_V,
                                  prefix.tokens_P, prefix.mask_P, np.int32(slot), settings)

  def step(self, num_steps: int = 1, *, until_finish: bool = False) -> StepResult:
    """Runs `num_steps` fixed-shape decode steps over all slots in one program (fewer if every slot finishes, or,
    with `until_finish`, after the step where some request finished)."""
    if not isinstance(num_steps, int) or num_steps < 1:
      raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    state = self._ensure_state()
    config, params = self._layout(self.num_slots)
    self._state, buffers, steps = programs.decode_program(
        config, params, state, np.int32(num_steps), np.bool_(until_finish), vocab_limit=self.vocab_limit,
        buffer_steps=bucket(num_steps, 1))
    buffers, steps = jax.device_get((buffers, steps))
    return StepResult(*(np.asarray(x)[:, :int(steps)] for x in buffers))

  def release(self, slot: int) -> None:
    """Frees `slot`: its request produces no more tokens."""
    if not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.num_slots:
      raise ValueError(f"slot must be in [0, num_slots={self.num_slots}), got {slot!r}")
    if self._state is not None:
      self._state = programs.release_program(self._state, np.int32(slot))


# ----------------------------------------------------------------------------------------------------------------------
# The scheduler.
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Event:
  """One generated token of a request.

  Attributes:
    request_id: The id given to `Scheduler.submit`.
    token_id: The token.
    logprob: Its log-probability under the model.
    top_logprobs: The request's `logprobs` most likely (token_id, logprob), most likely first.
    finish_reason: None while going on; 'stop' (the token ended a stop sequence, whose tokens were all reported)
      or 'length' (max_tokens reached) on the request's last token.
  """
  request_id: Any
  token_id: int
  logprob: float
  top_logprobs: list
  finish_reason: Optional[str] = None


class Scheduler:
  """A synchronous host loop over an `Engine`: a queue of requests, admitted into free slots between steps."""

  def __init__(self, engine: Engine, *, batch_prefill: bool = False):
    """Args:
      engine: The engine whose slots the requests use.
      batch_prefill: Prefill the requests admitted together in one forward pass (`Engine.prefill_batch`): faster,
        but a request's tokens may then depend on its companions through the last bits of its prompt's logits.
        Off, each request gets exactly the tokens it gets alone.
    """
    driver = engine._driver() if engine._driver is not None else None  # pylint: disable=protected-access
    if driver is not None and driver.has_work():
      raise RuntimeError(
          f"This engine's {engine.num_slots} slots are in use by another Scheduler that still has requests; two "
          f"would hand out the same slots. Finish or cancel its requests first, or use a second engine "
          f"(`gptjax.inference.engine.Engine(lm, ...)`).")
    engine._driver = weakref.ref(self)  # pylint: disable=protected-access
    self.engine = engine
    self._batch_prefill = batch_prefill
    self._waiting: collections.OrderedDict = collections.OrderedDict()  # request_id -> (prompt_ids, settings)
    self._slot_request: list = [None] * engine.num_slots  # request_id per slot, None when free.
    self._slot_logprobs = [0] * engine.num_slots
    self._slot_of: dict = {}

  def submit(self, request_id, prompt_ids: Sequence[int], settings: SamplingSettings) -> None:
    """Queues a request. Raises ValueError (naming the field) for a bad request or an id already in use."""
    if request_id in self._waiting or request_id in self._slot_of:
      raise ValueError(f"request_id {request_id!r} is already queued or running")
    prompt_ids = [int(t) for t in prompt_ids]
    self.engine.check_request(prompt_ids, settings)
    self._waiting[request_id] = (prompt_ids, settings)

  def cancel(self, request_id) -> None:
    """Drops a queued request, or frees a running one's slot before the next step (unknown ids are ignored)."""
    if self._waiting.pop(request_id, None) is not None:
      return
    slot = self._slot_of.pop(request_id, None)
    if slot is not None:
      self.engine.release(slot)
      self._slot_request[slot] = None

  def has_work(self) -> bool:
    return bool(self._waiting) or bool(self._slot_of)

  @property
  def num_waiting(self) -> int:
    return len(self._waiting)

  @property
  def num_running(self) -> int:
    return len(self._slot_of)

  def _admit(self) -> None:
    admitted = []
    for slot in range(self.engine.num_slots):
      if not self._waiting:
        break
      if self._slot_request[slot] is None:
        request_id, (prompt_ids, settings) = self._waiting.popitem(last=False)
        admitted.append((slot, request_id, prompt_ids, settings))
        self._slot_request[slot], self._slot_of[request_id] = request_id, slot
        self._slot_logprobs[slot] = settings.logprobs
    if self._batch_prefill and admitted:
      prefixes = self.engine.prefill_batch([a[2] for a in admitted], [a[3] for a in admitted])
    else:
      prefixes = [self.engine.prefill(prompt_ids, settings) for _, _, prompt_ids, settings in admitted]
    for (slot, *_), prefix in zip(admitted, prefixes):
      self.engine.insert(prefix, slot)

  def step(self, max_steps: int = 1) -> list[Event]:
    """Admits waiting requests into free slots (prefill + insert), then runs one decode step over all slots.

    With `max_steps` > 1 it runs up to that many steps in one program when nobody waits for a slot (or until a
    request finishes, when some do), which saves a host round trip per token. Events come step by step.
    """
    self._admit()
    if not self._slot_of:
      return []
    result = self.engine.step(max_steps if max_steps > 1 else 1, until_finish=bool(self._waiting))
    events = []
    for t in range(result.num_steps):
      for slot in np.flatnonzero(result.live_NT[:, t]):
        request_id = self._slot_request[slot]
        if request_id is None:
          continue
        n = self._slot_logprobs[slot]
        top = [(int(i), float(p)) for i, p in zip(result.top_ids_NTK[slot, t, :n],
                                                  result.top_logprobs_NTK[slot, t, :n])]
        reason = _FINISH_REASONS[int(result.finish_NT[slot, t])]
        events.append(Event(request_id, int(result.tokens_NT[slot, t]), float(result.logprobs_NT[slot, t]), top,
                            reason))
        if reason is not None:
          self._slot_request[slot] = None
          del self._slot_of[request_id]
    return events

  def prompt_logprobs(self, prompt_ids: Sequence[int]) -> list[Optional[float]]:
    """Each prompt token's log-probability given the ones before it (for echo); the first has none."""
    ids = [int(t) for t in prompt_ids]
    if len(ids) < 2:
      _check_ids(self.engine.lm.config, np.asarray(ids, np.int64), "prompt_ids")
      return [None]
    scores = self.engine.score(np.asarray([ids[:-1]]), np.asarray([ids[1:]]))
    return [None] + [float(x) for x in scores.logprob_BT[0]]


# ----------------------------------------------------------------------------------------------------------------------
# Requests of `LanguageModel.generate` / `.stream`, run through a scheduler.
# ----------------------------------------------------------------------------------------------------------------------


def engine_for(lm, num_rows: int, longest: int, max_new_tokens: int) -> Engine:
  """An engine sized to the request (bucketed), cached on the model: its slot cache is reused by later calls."""
  num_slots = bucket(min(num_rows, MAX_GENERATE_SLOTS), 1)
  max_length = bucket(longest + max_new_tokens, 16, lm.config.block_size)
  return lm.engine(num_slots=num_slots, max_length=max_length, name="generate")


def _row_settings(request, row: int, strategy: sampling.SamplingParams, max_new_tokens: int) -> SamplingSettings:
  # Token-id stops always fit (`generation.prepare` checks them); a stop string's encoding that does not fit the
  # engine's arrays is left to the text layer, which cuts the text at the string anyway.
  stops = [tuple(s) for s in request.token_stops[row] if len(s) <= sampling.MAX_STOP_LENGTH]
  return SamplingSettings(temperature=strategy.temperature, top_k=strategy.top_k, top_p=strategy.top_p,
                          repetition_penalty=strategy.repetition_penalty, seed=request.seed, stream_index=row,
                          max_tokens=max_new_tokens, stop_token_ids=tuple(stops[:sampling.MAX_STOP_SEQUENCES]))


def generate(lm, prompts, max_new_tokens: int, strategy: sampling.SamplingParams = sampling.SamplingParams(), *,
             seed: int = 0, stop=None, num_samples: int = 1, stop_at_eos: bool = True, truncate_prompt: bool = False,
             return_finish_reasons: bool = False):
  """`LanguageModel.generate` (see there). With `return_finish_reasons`, also returns 'stop' or 'length' per row.

  Row r (prompt r // num_samples, sample r % num_samples) draws with `stream_index = r`.
  """
  request = generation.prepare(lm, prompts, max_new_tokens, strategy, seed, stop, num_samples, stop_at_eos,
                               truncate_prompt)
  rows = request.rows
  # The rows of one call are one batch (tolerances as for any batched computation), so prefill them together.
  scheduler = Scheduler(engine_for(lm, len(rows), max(len(r) for r in rows), max_new_tokens), batch_prefill=True)
  for r, row in enumerate(rows):
    scheduler.submit(r, row, _row_settings(request, r, strategy, max_new_tokens))
  tokens = [[] for _ in rows]
  stopped = [False] * len(rows)
  steps = bucket(max_new_tokens, 8, MAX_STEPS_PER_CALL)
  while scheduler.has_work():
    for event in scheduler.step(max_steps=steps):
      tokens[event.request_id].append(event.token_id)
      stopped[event.request_id] = event.finish_reason == "stop"
  outputs, reasons = [], []
  for r, row in enumerate(rows):
    ids = tokens[r]
    if stopped[r]:
      ids = generation.strip_token_stop(ids, request.token_stops[r])
    is_stopped = stopped[r]
    if request.text:
      text = generation.TextStream(lm.tokenizer, row, request.string_stops[r])
      outputs.append(text.push(ids) + text.finish())
      is_stopped = is_stopped or text.stopped
    else:
      outputs.append(ids)
    reasons.append("stop" if is_stopped else "length")
  return (outputs, reasons) if return_finish_reasons else outputs


def stream(lm, prompt, max_new_tokens: int, strategy: sampling.SamplingParams = sampling.SamplingParams(), *,
           seed: int = 0, stop=None, stop_at_eos: bool = True, truncate_prompt: bool = False
           ) -> Iterator[Union[str, list[int]]]:
  """`LanguageModel.stream` (see there): the first sample of `generate([prompt], ...)`, piece by piece."""
  request = generation.prepare(lm, None if prompt is None else [prompt], max_new_tokens, strategy, seed,
                               None if stop is None else [stop], 1, stop_at_eos, truncate_prompt)
  row = request.rows[0]
  scheduler = Scheduler(engine_for(lm, 1, len(row), max_new_tokens))
  scheduler.submit(0, row, _row_settings(request, 0, strategy, max_new_tokens))
  token_stops = request.token_stops[0]
  # A multi-token stop sequence is recognised only once complete: hold back enough tokens to strip it then.
  hold = max([len(s) for s in token_stops] + [1]) - 1
  text = generation.TextStream(lm.tokenizer, row, request.string_stops[0]) if request.text else None
  pending: list[int] = []
  try:
    while scheduler.has_work():
      for event in scheduler.step():
        pending.append(event.token_id)
        if event.finish_reason == "stop":
          pending = generation.strip_token_stop(pending, token_stops)
        if event.finish_reason is not None:
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
    if text is not None:
      piece = text.finish()
      if piece:
        yield piece
  finally:
    scheduler.cancel(0)  # A consumer that breaks out of the loop frees the slot.

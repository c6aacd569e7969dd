"""OpenAI requests -> engine requests: validation (a 400 naming the field), prompts, stops and per-choice settings.

A request becomes a `Plan`: its prompts as token ids, and one `Choice` (one engine request, with its own slot and
random stream) per (prompt i, sample j), index i * n + j.

A request with the beam or constrained-decoding extensions (`num_beams` > 1, `no_repeat_ngram_size`,
`min_new_tokens`) also gets `Plan.decoding`, the keyword arguments of `gptjax.inference.beam.generate`: it runs
as one program outside the slot batch (`gptjax/serve/beams.py`), and its choices are then the best beams (or the
samples) of each prompt, index i * n + j, best first. `n` and `num_return_sequences` are one number, the choices
per prompt: give either, or both equal.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Any, Optional

from gptjax.serve import protocol
from gptjax.serve.protocol import bad_request

if TYPE_CHECKING:
  from gptjax.serve.app import ServerState

DEFAULT_MAX_TOKENS = 16  # OpenAI's completions default.


@dataclasses.dataclass
class Choice:
  index: int
  prompt: int  # Index of its prompt.
  request_id: str
  settings: Any


@dataclasses.dataclass
class Plan:
  """A validated request: its prompts, choices and how to render them."""
  kind: str  # "completion" or "chat"
  id: str
  created: int
  model: str
  prompts: list[list[int]]
  prompt_texts: list[str]
  choices: list[Choice]
  stops: list[str]
  echo: bool
  logprobs: Optional[int]  # None: none; N: the chosen token's and N alternatives.
  include_usage: bool
  user: Optional[str]
  decoding: Optional[dict] = None  # Beam / constrained decoding (gptjax/serve/beams.py); None: the slots.

  def log_line(self) -> str:
    parts = [f"prompts={len(self.prompts)}", f"choices={len(self.choices)}",
             f"prompt_tokens={sum(map(len, self.prompts))}",
             f"max_tokens={self.choices[0].settings.max_tokens}"]
    if self.user:
      parts.append(f"user={self.user!r}")
    return " ".join(parts)


def check_model(state: ServerState, name: Optional[str], required: bool = True) -> None:
  if name is None and not required:
    return
  if name != state.options.model_name:
    raise bad_request(f"The model {name!r} does not exist; this server serves {state.options.model_name!r} "
                      "(GET /v1/models)", param="model", code="model_not_found")


def encode(state: ServerState, text: str, param: str) -> list[int]:
  try:
    return state.tokenizer.encode(text)
  except ValueError as e:  # A character tokenizer meeting a character it lacks.
    raise bad_request(f"{param}: {e}", param=param) from None


def check_ids(state: ServerState, ids: list[int], param: str) -> None:
  for t in ids:
    if not 0 <= t < state.vocab_size:
      raise bad_request(f"{param}: token id {t} is outside the vocabulary [0, {state.vocab_size})", param=param)


def _completion_prompts(state: ServerState, prompt) -> tuple[list[list[int]], list[str]]:
  """(token ids, echo text) per prompt, from OpenAI's four prompt forms."""
  if isinstance(prompt, str):
    prompt = [prompt]
  if not prompt:
    raise bad_request("prompt is empty: give a string, a list of strings, or token ids", param="prompt")
  if all(isinstance(p, int) for p in prompt):
    prompt = [prompt]
  ids, texts = [], []
  eos = state.tokenizer.eos_id
  for i, p in enumerate(prompt):
    if isinstance(p, str):
      row = encode(state, p, "prompt")
      text = p
    else:
      check_ids(state, p, "prompt")
      row, text = list(p), state.tokenizer.decode(p)
    if not row:
      if eos is None:  # GPT-2 starts unconditional samples from <|endoftext|>; GPT-1 has none to start from.
        raise bad_request(f"prompt {i} is empty, and this model has no <|endoftext|> to start from", param="prompt")
      row = [eos]
    ids.append(row)
    texts.append(text)
  return ids, texts


def _settings(state: ServerState, body, prompts: list[list[int]], stops: list[str], max_tokens: int, logprobs: int,
              prompt_param: str) -> list[Choice]:
  """One engine request per (prompt, sample), validated; raises APIError naming the field."""
  from gptjax.inference import engine as engine_lib  # pylint: disable=g-import-not-at-top
  n = choices_per_prompt(body)
  total = len(prompts) * n
  if total > state.batcher.capacity:
    raise bad_request(f"n={n} with {len(prompts)} prompt(s) asks for {total} sequences; this server admits at "
                      f"most {state.batcher.capacity} at once", param="n")
  for i, p in enumerate(prompts):
    if len(p) + max_tokens > state.context:
      raise bad_request(
          f"This model's maximum context length is {state.context} tokens. However, you requested "
          f"{len(p) + max_tokens} tokens ({len(p)} in prompt {i}, {max_tokens} in the completion). Please reduce "
          "the prompt or max_tokens.", param=prompt_param, code="context_length_exceeded")
  stop_ids = [] if state.tokenizer.eos_id is None or body.ignore_eos else [(state.tokenizer.eos_id,)]
  for s in stops:
    try:  # The engine stops at the usual encoding at once; TextStream catches any other spelling.
      encoded = tuple(state.tokenizer.encode(s))
    except ValueError:
      continue
    if 0 < len(encoded) <= _MAX_STOP_TOKENS:  # Longer ones are left to TextStream alone.
      stop_ids.append(encoded)
  seed = body.seed if body.seed is not None else secrets.randbelow(2**32)
  choices = []
  for i, prompt in enumerate(prompts):
    for j in range(n):
      settings = engine_lib.SamplingSettings(
          temperature=1.0 if body.temperature is None else body.temperature,
          top_k=body.top_k or 0,
          top_p=1.0 if body.top_p is None else body.top_p,
          repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
          presence_penalty=body.presence_penalty or 0.0,
          frequency_penalty=body.frequency_penalty or 0.0,
          seed=seed,
          stream_index=j,
          max_tokens=max_tokens,
          stop_token_ids=tuple(stop_ids),
          logprobs=logprobs or 0)
      if j == 0 and max_tokens > 0:
        _check_request(state, body, prompt, settings, prompt_param)
      choices.append(Choice(index=len(choices), prompt=i, request_id=state.batcher.new_id("req"),
                             settings=settings))
  return choices


# The engine's limit on a stop sequence's tokens; a stop string encoding to more is matched on text only.
_MAX_STOP_TOKENS = 16
# Engine messages start with the field they are about; the request field it came from.
_ENGINE_FIELDS = {"stop_token_ids": "stop", "prompt_ids": "prompt", "stream_index": "n"}


def _check_request(state: ServerState, body, prompt: list[int], settings, prompt_param: str) -> None:
  """The engine's own validation, run here (it is pure) so that a bad value is a 400 before anything is queued."""
  try:
    state.engine.check_request(prompt, settings)
  except ValueError as e:
    word = str(e).split()[0].strip(":=,")
    param = _ENGINE_FIELDS.get(word, word)
    if param == "logprobs" and isinstance(body, protocol.ChatCompletionRequest):
      param = "top_logprobs"
    if param == "prompt":
      param = prompt_param
    raise bad_request(str(e), param=param if param in type(body).model_fields else None) from None


def choices_per_prompt(body) -> int:
  """`n`, or its synonym `num_return_sequences` (the choices per prompt); both given must agree."""
  if body.num_return_sequences is not None and body.n is not None and body.n != body.num_return_sequences:
    raise bad_request(f"n={body.n} and num_return_sequences={body.num_return_sequences} both count the choices per "
                      "prompt: give one, or equal values", param="num_return_sequences")
  return body.num_return_sequences or body.n or 1


# Settings the beam program does not implement: with beams all sampling ones, without beams the penalties.
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k")
_PENALTY_FIELDS = ("repetition_penalty", "presence_penalty", "frequency_penalty")


def decoding_options(state: ServerState, body, prompts: list[list[int]], max_tokens: int, logprobs) -> Optional[dict]:
  """`beam.generate`'s keyword arguments for a beam / constrained request (None for a plain one); a 400 naming
  the field for a combination it cannot honour rather than a setting silently dropped."""
  beams = body.num_beams or 1
  ngram, min_new = body.no_repeat_ngram_size or 0, body.min_new_tokens or 0
  if beams == 1:
    for field in ("length_penalty", "early_stopping"):
      if getattr(body, field) is not None:
        raise bad_request(f"{field} applies to beam search only: set num_beams > 1, or drop it", param=field)
    if not (ngram or min_new):
      return None
  what = f"num_beams={beams}" if beams > 1 else ("no_repeat_ngram_size" if ngram else "min_new_tokens")
  if max_tokens < 1:
    raise bad_request(f"max_tokens must be at least 1 with {what}", param="max_tokens")
  if body.stream:
    raise bad_request(f"stream=true is not supported with {what}: the request runs as one program and returns "
                      "whole sequences; set stream=false", param="stream")
  if logprobs is not None:
    param = "logprobs" if isinstance(body, protocol.CompletionRequest) or not body.top_logprobs else "top_logprobs"
    raise bad_request(f"logprobs are not supported with {what}", param=param)
  for field in (_SAMPLING_FIELDS if beams > 1 else ()) + _PENALTY_FIELDS:
    if getattr(body, field) is not None:
      reason = ("beam search is deterministic" if field in _SAMPLING_FIELDS
                else "the beam program does not implement it")
      raise bad_request(f"{field} cannot be combined with {what}: {reason}", param=field)
  n = choices_per_prompt(body)
  if beams > 1 and n > beams:
    raise bad_request(f"n={n} choices per prompt (num_return_sequences) exceed num_beams={beams}: a prompt has only "
                      f"{beams} beams", param="num_return_sequences" if body.num_return_sequences else "n")
  if min_new > max_tokens:
    raise bad_request(f"min_new_tokens={min_new} exceeds max_tokens={max_tokens}", param="min_new_tokens")
  rows = len(prompts) * (beams if beams > 1 else n)
  if rows > state.batcher.capacity:
    raise bad_request(f"{len(prompts)} prompt(s) x {beams if beams > 1 else n} rows = {rows} rows; this server "
                      f"admits at most {state.batcher.capacity}", param="num_beams" if beams > 1 else "n")
  options = dict(num_beams=beams, no_repeat_ngram_size=ngram, min_new_tokens=min_new, num_return_sequences=n)
  if beams > 1:
    options.update(length_penalty=1.0 if body.length_penalty is None else body.length_penalty,
                   early_stopping=False if body.early_stopping is None else body.early_stopping)
  return options


def _check_unsupported(body) -> None:
  if body.logit_bias:
    raise bad_request("logit_bias is not supported by this server", param="logit_bias")
  if getattr(body, "suffix", None):
    raise bad_request("suffix (insertion) is not supported: GPT-2 only continues text", param="suffix")
  if getattr(body, "best_of", None) not in (None, body.n or 1):
    raise bad_request("best_of other than n is not supported", param="best_of")
  if getattr(body, "tools", None):
    raise bad_request("tools are not supported: GPT-2 has no function-calling format", param="tools")


def plan_completion(state: ServerState, body: protocol.CompletionRequest) -> Plan:
  check_model(state, body.model)
  _check_unsupported(body)
  prompts, texts = _completion_prompts(state, body.prompt)
  max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
  if max_tokens == 0 and not body.echo:
    raise bad_request("max_tokens must be at least 1 (0 is allowed only with echo, to score the prompt)",
                      param="max_tokens")
  decoding = decoding_options(state, body, prompts, max_tokens, body.logprobs)
  choices = _settings(state, body, prompts, body.stop or [], max_tokens, body.logprobs, "prompt")
  return Plan(kind="completion", id=f"cmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()),
               model=state.options.model_name, prompts=prompts, prompt_texts=texts, choices=choices,
               stops=list(body.stop or []), echo=bool(body.echo), logprobs=body.logprobs,
               include_usage=bool(body.stream and body.stream_options and body.stream_options.include_usage),
               user=body.user, decoding=decoding)


def plan_chat(state: ServerState, body: protocol.ChatCompletionRequest) -> Plan:
  check_model(state, body.model)
  _check_unsupported(body)
  text = protocol.render_chat(body.messages)
  prompt = encode(state, text, "messages")
  max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
  if max_tokens is None:  # OpenAI's chat default: as long as the context allows.
    max_tokens = max(1, state.context - len(prompt))
  if max_tokens == 0:
    raise bad_request("max_tokens must be at least 1", param="max_tokens")
  logprobs = (body.top_logprobs or 0) if body.logprobs else None
  if body.top_logprobs and not body.logprobs:
    raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
  stops = list(protocol.CHAT_STOPS) + [s for s in body.stop or [] if s not in protocol.CHAT_STOPS]
  decoding = decoding_options(state, body, [prompt], max_tokens, logprobs)
  choices = _settings(state, body, [prompt], stops, max_tokens, logprobs, "messages")
  return Plan(kind="chat", id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()),
               model=state.options.model_name, prompts=[prompt], prompt_texts=[text], choices=choices, stops=stops,
               echo=False, logprobs=logprobs,
               include_usage=bool(body.stream and body.stream_options and body.stream_options.include_usage),
               user=body.user, decoding=decoding)

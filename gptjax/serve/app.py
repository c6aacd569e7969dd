"""An OpenAI-compatible HTTP server over the engine: `create_app(lm)` returns the FastAPI application.

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both stream as server-sent events), `GET /v1/models`,
`GET /health` (503 until the model is loaded and warmed up), `POST /tokenize`, `POST /detokenize`, `GET /metrics`
(JSON counters, the engine's compile counts among them).

Each choice of a request (prompt i, sample j: index i * n + j) is one engine request with its own slot and its
own random stream, `fold_in(fold_in(key(seed), j), step)`: a choice's tokens depend on its prompt, settings, seed
and j only, not on what else is being served. The text of a choice goes through `TextStream`, the same one
`lm.generate` / `lm.stream` use: it never splits a UTF-8 character and holds back text that may begin a stop
string, so a stop string never reaches the client, not even split across chunks, and the streamed text is the
non-streamed text. Streamed and non-streamed responses are two renderings of one event loop (`_run_choices`).

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: a client's mistake is a 400 naming
the field (never a 5xx, which the `openai` client retries), an unknown route a 404, a full queue a 429 with
`Retry-After`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import threading
import time
import uuid
from typing import Any, AsyncIterator, Callable, Optional, Union

import fastapi
import numpy as np
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptjax.inference.generation import TextStream
from gptjax.serve import batcher as batcher_lib
from gptjax.serve import protocol
from gptjax.serve.protocol import APIError, bad_request

log = logging.getLogger("gptjax.serve")

DEFAULT_MAX_TOKENS = 16  # OpenAI's completions default.


@dataclasses.dataclass
class ServerOptions:
  """How the server is set up.

  Attributes:
    model_name: The id served in /v1/models; requests must name it.
    num_slots: Requests decoded together (the engine's slot count).
    max_queue: Requests that may wait for a slot; beyond `num_slots + max_queue` a request gets a 429.
    warm_up: Compile the decode step and every prompt bucket before /health says ok.
  """
  model_name: str = "gptjax"
  num_slots: int = 8
  max_queue: int = 256
  warm_up: bool = True


class _State:
  """What the routes share: the model and engine once loaded, and the batcher thread that drives them."""

  def __init__(self, options: ServerOptions):
    self.options = options
    self.lm = None
    self.engine = None
    self.batcher: Optional[batcher_lib.Batcher] = None
    self.ready = False
    self.load_error: Optional[str] = None
    self.started = time.time()
    self.warm_up_seconds: Optional[float] = None
    self.warm_trace_counts: Optional[dict] = None

  @property
  def tokenizer(self):
    return self.lm.tokenizer

  @property
  def context(self) -> int:
    return self.engine.max_length

  @property
  def vocab_size(self) -> int:
    return self.lm.tokenizer.vocab_size if self.lm.tokenizer is not None else self.lm.config.vocab_size

  def require_ready(self) -> None:
    if not self.ready:
      raise APIError(503, self.load_error or "The model is loading; retry once GET /health returns 200",
                     type="server_error", code="model_loading", headers={"Retry-After": "5"})


def create_app(lm: Union[Any, Callable[[], Any]], options: Optional[ServerOptions] = None) -> fastapi.FastAPI:
  """The FastAPI application serving `lm`.

  Args:
    lm: A `gptjax.LanguageModel`, or a function returning one: it is then called in a background thread after
      the server starts, so that /health answers (503) while the model loads.
    options: `ServerOptions` (model name, slots, queue length).

  Returns:
    The application; run it with uvicorn. The engine thread starts with the application's lifespan.
  """
  options = options or ServerOptions()
  state = _State(options)

  async def lifespan(app: fastapi.FastAPI):
    del app
    loop = asyncio.get_running_loop()
    threading.Thread(target=_load_and_warm_up, args=(state, lm, loop), name="gptjax-load", daemon=True).start()
    yield
    if state.batcher is not None:
      state.batcher.close()

  app = fastapi.FastAPI(title="gptjax", lifespan=lifespan, docs_url=None, redoc_url=None)
  app.state.gptjax = state
  app.add_middleware(_AccessLog)
  _add_error_handlers(app)
  from gptjax.serve import explorer  # pylint: disable=g-import-not-at-top  (POST /v1/explore, GET /explorer)
  app.include_router(explorer.router)

  @app.get("/health")
  async def health():
    if not state.ready:
      status = "error" if state.load_error else "loading"
      return JSONResponse(APIError(503, state.load_error or "loading", type="server_error", code=status).body(),
                          status_code=503, headers={"Retry-After": "5"})
    return {"status": "ok", "model": options.model_name}

  @app.get("/metrics")
  async def metrics():
    state.require_ready()
    stats = state.batcher.stats
    return {
        "model": options.model_name,
        "num_slots": state.engine.num_slots,
        "max_length": state.engine.max_length,
        "capacity": state.batcher.capacity,
        "outstanding": state.batcher.outstanding,
        "steps": stats.steps,
        "tokens_generated": stats.tokens,
        "requests_submitted": stats.submitted,
        "requests_finished": stats.finished,
        "requests_cancelled": stats.cancelled,
        "max_steps_to_cancel": stats.max_steps_to_cancel,
        "step_seconds": stats.step_seconds,
        "warm_up_seconds": state.warm_up_seconds,
        "trace_counts": await state.batcher.call(state.engine.trace_counts),
        "trace_counts_after_warm_up": state.warm_trace_counts,
    }

  @app.get("/v1/models")
  async def models():
    return {"object": "list", "data": [_model_card(state)]}

  @app.get("/v1/models/{name:path}")
  async def model(name: str):
    if name != options.model_name:
      raise APIError(404, f"The model {name!r} does not exist; this server has {options.model_name!r}",
                     param="model", code="model_not_found")
    return _model_card(state)

  @app.post("/tokenize")
  async def tokenize(body: protocol.TokenizeRequest):
    state.require_ready()
    _check_model(state, body.model, required=False)
    if (body.prompt is None) == (body.messages is None):
      raise bad_request("give exactly one of `prompt` (a string) or `messages` (a conversation)", param="prompt")
    text = body.prompt if body.prompt is not None else protocol.render_chat(body.messages)
    ids = _encode(state, text, "prompt" if body.prompt is not None else "messages")
    return {"tokens": ids, "count": len(ids), "max_model_len": state.context}

  @app.post("/detokenize")
  async def detokenize(body: protocol.DetokenizeRequest):
    state.require_ready()
    _check_model(state, body.model, required=False)
    _check_ids(state, body.tokens, "tokens")
    return {"prompt": state.tokenizer.decode(body.tokens)}

  @app.post("/v1/completions")
  async def completions(body: protocol.CompletionRequest, request: fastapi.Request):
    state.require_ready()
    plan = _plan_completion(state, body)
    request.state.log = plan.log_line()
    run = _Run.start(state, plan)
    return _EventStream(run, request) if body.stream else await _collect(run, request)

  @app.post("/v1/chat/completions")
  async def chat_completions(body: protocol.ChatCompletionRequest, request: fastapi.Request):
    state.require_ready()
    plan = _plan_chat(state, body)
    request.state.log = plan.log_line()
    run = _Run.start(state, plan)
    return _EventStream(run, request) if body.stream else await _collect(run, request)

  return app


class _AccessLog:
  """One log line per request, written when its response has been sent (for a stream: when it ends), with what
  the route left in `request.state.log` (token counts, user)."""

  def __init__(self, app):
    self.app = app

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    start, status = time.perf_counter(), [0]

    async def send_and_note(message):
      if message["type"] == "http.response.start":
        status[0] = message["status"]
      await send(message)

    try:
      await self.app(scope, receive, send_and_note)
    finally:
      extra = scope.get("state", {}).get("log", "")
      log.info("%s %s %s %.3fs %s", scope["method"], scope["path"], status[0] or "disconnected",
               time.perf_counter() - start, extra)


def _model_card(state: _State) -> dict:
  return {"id": state.options.model_name, "object": "model", "created": int(state.started), "owned_by": "gptjax",
          "max_model_len": state.context if state.ready else None}


# ----------------------------------------------------------------------------------------------------------------------
# Loading and warm-up.
# ----------------------------------------------------------------------------------------------------------------------


def _load_and_warm_up(state: _State, lm, loop: asyncio.AbstractEventLoop) -> None:
  from gptjax.inference import engine as engine_lib  # pylint: disable=g-import-not-at-top
  try:
    start = time.perf_counter()
    lm = lm() if callable(lm) and not hasattr(lm, "config") else lm
    if lm.tokenizer is None:
      raise ValueError("the model has no tokenizer files: the server needs one to read and write text")
    state.lm = lm
    state.engine = engine_lib.Engine(lm, num_slots=state.options.num_slots)
    scheduler = engine_lib.Scheduler(state.engine)
    state.batcher = batcher_lib.Batcher(scheduler, capacity=state.options.num_slots + state.options.max_queue)
    state.batcher.start(loop)
    if state.options.warm_up:
      asyncio.run_coroutine_threadsafe(_warm_up(state), loop).result()
    state.warm_up_seconds = time.perf_counter() - start
    state.warm_trace_counts = state.engine.trace_counts()
    state.ready = True
    log.info("ready: %s, %d slots, context %d, loaded and warmed up in %.1fs", state.options.model_name,
             state.engine.num_slots, state.engine.max_length, state.warm_up_seconds)
  except Exception as e:  # pylint: disable=broad-except  (reported by /health and the log; the server stays up)
    state.load_error = f"loading the model failed: {type(e).__name__}: {e}"
    log.exception("loading the model failed")


async def _warm_up(state: _State) -> None:
  """Compiles what serving needs before /health says ok: every prompt-length bucket's prefill, the decode step
  (greedy and sampled, with log-probs), and the prompt forward of `echo`, so that no request waits on XLA."""
  from gptjax.inference import engine as engine_lib  # pylint: disable=g-import-not-at-top
  context = state.context
  # One prompt per prefill bucket (the engine's policy), at the bucket's longest length that leaves one token.
  lengths = sorted({min(engine_lib.bucket(n, 8, context), context - 1) for n in range(1, context)})
  sink = asyncio.Queue()
  for i, length in enumerate(lengths):
    settings = engine_lib.SamplingSettings(temperature=0.0 if i % 2 else 1.0, top_k=5 * (i % 2), max_tokens=1,
                                           logprobs=1 if i % 2 else 0, seed=i)
    state.batcher.submit(state.batcher.new_id("warmup"), [0] * length, settings, sink)
  for _ in lengths:
    _, event = await sink.get()
    if isinstance(event, BaseException):
      raise event
  await state.batcher.call(lambda: state.engine.release(0))  # What a cancelled request runs.
  for length in lengths:  # The prompt forward of echo + logprobs.
    await state.batcher.call(lambda length=length: _prompt_logprobs(state, [0] * length, 1))


# ----------------------------------------------------------------------------------------------------------------------
# Requests -> engine requests.
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Choice:
  index: int
  prompt: int  # Index of its prompt.
  request_id: str
  settings: Any


@dataclasses.dataclass
class _Plan:
  """A validated request: its prompts, choices and how to render them."""
  kind: str  # "completion" or "chat"
  id: str
  created: int
  model: str
  prompts: list[list[int]]
  prompt_texts: list[str]
  choices: list[_Choice]
  stops: list[str]
  echo: bool
  logprobs: Optional[int]  # None: none; N: the chosen token's and N alternatives.
  include_usage: bool
  user: Optional[str]

  def log_line(self) -> str:
    parts = [f"prompts={len(self.prompts)}", f"choices={len(self.choices)}",
             f"prompt_tokens={sum(map(len, self.prompts))}",
             f"max_tokens={self.choices[0].settings.max_tokens}"]
    if self.user:
      parts.append(f"user={self.user!r}")
    return " ".join(parts)


def _check_model(state: _State, name: Optional[str], required: bool = True) -> None:
  if name is None and not required:
    return
  if name != state.options.model_name:
    raise bad_request(f"The model {name!r} does not exist; this server serves {state.options.model_name!r} "
                      "(GET /v1/models)", param="model", code="model_not_found")


def _encode(state: _State, text: str, param: str) -> list[int]:
  try:
    return state.tokenizer.encode(text)
  except ValueError as e:  # A character tokenizer meeting a character it lacks.
    raise bad_request(f"{param}: {e}", param=param) from None


def _check_ids(state: _State, ids: list[int], param: str) -> None:
  for t in ids:
    if not 0 <= t < state.vocab_size:
      raise bad_request(f"{param}: token id {t} is outside the vocabulary [0, {state.vocab_size})", param=param)


def _completion_prompts(state: _State, prompt) -> tuple[list[list[int]], list[str]]:
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
      row = _encode(state, p, "prompt")
      text = p
    else:
      _check_ids(state, p, "prompt")
      row, text = list(p), state.tokenizer.decode(p)
    if not row:
      if eos is None:  # GPT-2 starts unconditional samples from <|endoftext|>; GPT-1 has none to start from.
        raise bad_request(f"prompt {i} is empty, and this model has no <|endoftext|> to start from", param="prompt")
      row = [eos]
    ids.append(row)
    texts.append(text)
  return ids, texts


def _settings(state: _State, body, prompts: list[list[int]], stops: list[str], max_tokens: int, logprobs: int,
              prompt_param: str) -> list[_Choice]:
  """One engine request per (prompt, sample), validated; raises APIError naming the field."""
  from gptjax.inference import engine as engine_lib  # pylint: disable=g-import-not-at-top
  n = body.n or 1
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
      choices.append(_Choice(index=len(choices), prompt=i, request_id=state.batcher.new_id("req"),
                             settings=settings))
  return choices


# The engine's limit on a stop sequence's tokens; a stop string encoding to more is matched on text only.
_MAX_STOP_TOKENS = 16
# Engine messages start with the field they are about; the request field it came from.
_ENGINE_FIELDS = {"stop_token_ids": "stop", "prompt_ids": "prompt", "stream_index": "n"}


def _check_request(state: _State, body, prompt: list[int], settings, prompt_param: str) -> None:
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


def _check_unsupported(body) -> None:
  if body.logit_bias:
    raise bad_request("logit_bias is not supported by this server", param="logit_bias")
  if getattr(body, "suffix", None):
    raise bad_request("suffix (insertion) is not supported: GPT-2 only continues text", param="suffix")
  if getattr(body, "best_of", None) not in (None, body.n or 1):
    raise bad_request("best_of other than n is not supported", param="best_of")
  if getattr(body, "tools", None):
    raise bad_request("tools are not supported: GPT-2 has no function-calling format", param="tools")


def _plan_completion(state: _State, body: protocol.CompletionRequest) -> _Plan:
  _check_model(state, body.model)
  _check_unsupported(body)
  prompts, texts = _completion_prompts(state, body.prompt)
  max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
  if max_tokens == 0 and not body.echo:
    raise bad_request("max_tokens must be at least 1 (0 is allowed only with echo, to score the prompt)",
                      param="max_tokens")
  choices = _settings(state, body, prompts, body.stop or [], max_tokens, body.logprobs, "prompt")
  return _Plan(kind="completion", id=f"cmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()),
               model=state.options.model_name, prompts=prompts, prompt_texts=texts, choices=choices,
               stops=list(body.stop or []), echo=bool(body.echo), logprobs=body.logprobs,
               include_usage=bool(body.stream and body.stream_options and body.stream_options.include_usage),
               user=body.user)


def _plan_chat(state: _State, body: protocol.ChatCompletionRequest) -> _Plan:
  _check_model(state, body.model)
  _check_unsupported(body)
  text = protocol.render_chat(body.messages)
  prompt = _encode(state, text, "messages")
  max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
  if max_tokens is None:  # OpenAI's chat default: as long as the context allows.
    max_tokens = max(1, state.context - len(prompt))
  if max_tokens == 0:
    raise bad_request("max_tokens must be at least 1", param="max_tokens")
  logprobs = (body.top_logprobs or 0) if body.logprobs else None
  if body.top_logprobs and not body.logprobs:
    raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
  stops = list(protocol.CHAT_STOPS) + [s for s in body.stop or [] if s not in protocol.CHAT_STOPS]
  choices = _settings(state, body, [prompt], stops, max_tokens, logprobs, "messages")
  return _Plan(kind="chat", id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()),
               model=state.options.model_name, prompts=[prompt], prompt_texts=[text], choices=choices, stops=stops,
               echo=False, logprobs=logprobs,
               include_usage=bool(body.stream and body.stream_options and body.stream_options.include_usage),
               user=body.user)


# ----------------------------------------------------------------------------------------------------------------------
# Engine events -> text, log-probs and finish reasons.
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Token:
  text: str  # This token's share of the output text ('' while it holds part of a UTF-8 character).
  logprob: Optional[float]
  top: Optional[list[tuple[str, float]]]
  offset: int  # Of its text in the choice's text.


@dataclasses.dataclass
class _Update:
  index: int
  text: str
  tokens: list[_Token]
  finish_reason: Optional[str]


class _ChoiceText:
  """One choice's text layer: engine events in, safe text out, with the tokens behind the text released along."""

  def __init__(self, state: _State, plan: _Plan, choice: _Choice):
    prompt_ids = plan.prompts[choice.prompt]
    self.index = choice.index
    self._eos = state.tokenizer.eos_id
    self._tokenizer = state.tokenizer
    self._text = TextStream(state.tokenizer, prompt_ids, plan.stops)
    self._pieces = TextStream(state.tokenizer, prompt_ids) if plan.logprobs is not None else None
    self._base = len(plan.prompt_texts[choice.prompt]) if plan.echo else 0
    self._offset = self._base
    self._released = self._base
    self._held: list[_Token] = []
    self.generated = 0
    self.finish_reason: Optional[str] = None

  def feed(self, event) -> _Update:
    self.generated += 1
    final = event.finish_reason is not None
    # <|endoftext|> ends the text and is not part of it; a stop string's tokens are, until TextStream cuts them.
    ids = [] if final and event.finish_reason == "stop" and event.token_id == self._eos else [event.token_id]
    if self._pieces is not None and ids:
      piece = self._pieces.push(ids)
      top = [(self._token_text(t), float(lp)) for t, lp in event.top_logprobs]
      self._held.append(_Token(piece, float(event.logprob), top, self._offset))
      self._offset += len(piece)
    new = self._text.push(ids)
    if self._text.stopped:
      self.finish_reason = "stop"
    elif final:
      new += self._text.finish()
      self.finish_reason = event.finish_reason
    self._released += len(new)
    # A token goes out with the first text it produced; at the end, those whose text was cut (a stop) stay out.
    count = 0
    while count < len(self._held) and self._held[count].offset < self._released:
      count += 1
    out = self._held[:count]
    self._held = [] if self.finish_reason is not None else self._held[count:]
    return _Update(self.index, new, out, self.finish_reason)

  def _token_text(self, token_id: int) -> str:
    return self._tokenizer.decode([int(token_id)])


def _prompt_logprobs(state: _State, ids: list[int], top_n: int) -> list[_Token]:
  """The prompt's tokens with their log-probabilities (the first has none), for `echo` with `logprobs`.

  Runs on the engine thread: one forward pass, log-softmax over the vocabulary the tokenizer knows.
  """
  logits_TV = np.asarray(state.engine.forward(np.asarray([ids], np.int32)).logits_BTV[0], np.float64)
  logits_TV = logits_TV[:, :state.vocab_size]
  logp_TV = logits_TV - np.logaddexp.reduce(logits_TV, axis=-1, keepdims=True)
  pieces = TextStream(state.tokenizer, [])
  out, offset = [], 0
  for t, token_id in enumerate(ids):
    text = pieces.push([token_id])
    if t == 0:
      out.append(_Token(text, None, None, offset))
    else:
      row = logp_TV[t - 1]
      best = np.argsort(-row, kind="stable")[:top_n] if top_n else []
      top = [(state.tokenizer.decode([int(b)]), float(row[b])) for b in best]
      out.append(_Token(text, float(row[token_id]), top, offset))
    offset += len(text)
  return out


class _Run:
  """A plan's choices in the engine: `start` admits them all at once (or raises the 429), `updates` yields their
  text as events arrive, `close` cancels whatever is still running (the client went away, or stopped reading)."""

  def __init__(self, state: _State, plan: _Plan):
    self.state, self.plan = state, plan
    self.texts = {c.request_id: _ChoiceText(state, plan, c) for c in plan.choices}
    self.running: set[str] = set()
    self._sink: asyncio.Queue = asyncio.Queue()

  @classmethod
  def start(cls, state: _State, plan: _Plan) -> "_Run":
    # Check and submit with no await in between: admission cannot race another request.
    if not state.batcher.has_room(len(plan.choices)):
      raise APIError(429, f"The server is busy: {state.batcher.outstanding} sequences are in flight (capacity "
                     f"{state.batcher.capacity}); retry shortly", type="rate_limit_error", code="queue_full",
                     headers={"Retry-After": "1"})
    run = cls(state, plan)
    for choice in plan.choices:
      if choice.settings.max_tokens > 0:  # max_tokens=0 (echo only): nothing to generate.
        state.batcher.submit(choice.request_id, plan.prompts[choice.prompt], choice.settings, run._sink)
        run.running.add(choice.request_id)
    return run

  @property
  def completion_tokens(self) -> int:
    return sum(t.generated for t in self.texts.values())

  async def updates(self) -> AsyncIterator[_Update]:
    for choice in self.plan.choices:
      if choice.settings.max_tokens == 0:
        yield _Update(choice.index, "", [], "length")
    while self.running:
      request_id, event = await self._sink.get()
      if isinstance(event, BaseException):
        raise event
      if request_id not in self.running:
        continue  # Already ended by a stop string; the engine's last events for it are dropped.
      update = self.texts[request_id].feed(event)
      if update.finish_reason is not None:
        self.running.discard(request_id)
        if event.finish_reason is None:  # A stop string ended it before the engine knew: free the slot.
          self.state.batcher.cancel(request_id)
      if update.text or update.tokens or update.finish_reason:
        yield update

  def close(self) -> None:
    if self.running:
      log.info("%s: %d unfinished sequence(s) cancelled", self.plan.id, len(self.running))
    for request_id in self.running:
      self.state.batcher.cancel(request_id)
    self.running.clear()


def _usage(run: _Run) -> dict:
  prompt = sum(len(p) for p in run.plan.prompts)
  completion = run.completion_tokens
  return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _echo_tokens(state: _State, plan: _Plan) -> list[Optional[list[_Token]]]:
  if not (plan.echo and plan.logprobs is not None):
    return [None] * len(plan.prompts)
  return [await state.batcher.call(lambda p=p: _prompt_logprobs(state, p, plan.logprobs)) for p in plan.prompts]


def _completion_logprobs(tokens: list[_Token]) -> dict:
  return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
          "top_logprobs": [None if t.top is None else dict(t.top) for t in tokens],
          "text_offset": [t.offset for t in tokens]}


def _chat_logprobs(tokens: list[_Token]) -> dict:
  def entry(text, logprob):
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
  return {"content": [{**entry(t.text, t.logprob), "top_logprobs": [entry(s, lp) for s, lp in t.top or []]}
                      for t in tokens]}


async def _collect(run: _Run, request: fastapi.Request) -> dict:
  """The non-streamed response: all updates joined. A client that goes away cancels the request."""
  plan, chat = run.plan, run.plan.kind == "chat"
  echo = await _echo_tokens(run.state, plan)
  texts = {c.index: (plan.prompt_texts[c.prompt] if plan.echo else "") for c in plan.choices}
  tokens = {c.index: list(echo[c.prompt] or []) for c in plan.choices}
  reasons = {}

  async def consume():
    async for update in run.updates():
      texts[update.index] += update.text
      tokens[update.index].extend(update.tokens)
      if update.finish_reason:
        reasons[update.index] = update.finish_reason

  task = asyncio.ensure_future(consume())
  try:
    while not task.done():
      await asyncio.wait({task}, timeout=0.25)
      if not task.done() and await request.is_disconnected():
        task.cancel()
    task.result()
  finally:
    if not task.done():
      task.cancel()
    run.close()
  choices = []
  for c in plan.choices:
    logprobs = None
    if plan.logprobs is not None:
      logprobs = (_chat_logprobs if chat else _completion_logprobs)(tokens[c.index])
    if chat:
      choices.append({"index": c.index, "message": {"role": "assistant", "content": texts[c.index]},
                      "logprobs": logprobs, "finish_reason": reasons[c.index]})
    else:
      choices.append({"index": c.index, "text": texts[c.index], "logprobs": logprobs,
                      "finish_reason": reasons[c.index]})
  request.state.log = plan.log_line() + f" completion_tokens={run.completion_tokens}"
  return {"id": plan.id, "object": "chat.completion" if chat else "text_completion", "created": plan.created,
          "model": plan.model, "choices": choices, "usage": _usage(run)}


def _chunk(plan: _Plan, choices: list[dict]) -> dict:
  chunk = {"id": plan.id, "object": "chat.completion.chunk" if plan.kind == "chat" else "text_completion",
           "created": plan.created, "model": plan.model, "choices": choices}
  if plan.include_usage:
    chunk["usage"] = None  # OpenAI: null in every chunk but the last, which has the usage and no choices.
  return chunk


async def _completion_chunks(run: _Run) -> AsyncIterator[dict]:
  plan = run.plan
  echo = await _echo_tokens(run.state, plan)
  started = set()
  async for update in run.updates():
    text, tokens = update.text, update.tokens
    if update.index not in started:  # The echoed prompt leads each choice's first chunk.
      started.add(update.index)
      prompt = plan.choices[update.index].prompt
      if plan.echo:
        text, tokens = plan.prompt_texts[prompt] + text, list(echo[prompt] or []) + tokens
    yield _chunk(plan, [{"index": update.index, "text": text,
                         "logprobs": None if plan.logprobs is None else _completion_logprobs(tokens),
                         "finish_reason": update.finish_reason}])


async def _chat_chunks(run: _Run) -> AsyncIterator[dict]:
  plan = run.plan
  for c in plan.choices:  # OpenAI opens each choice with its role.
    yield _chunk(plan, [{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}])
  async for update in run.updates():
    delta = {"content": update.text} if update.text or not update.finish_reason else {}
    yield _chunk(plan, [{"index": update.index, "delta": delta,
                         "logprobs": None if plan.logprobs is None else _chat_logprobs(update.tokens),
                         "finish_reason": update.finish_reason}])


class _EventStream(StreamingResponse):
  """A StreamingResponse that cancels its run however it ends: finished, failed, or the client gone (Starlette
  then cancels the body task, possibly before the generator ever started, so a `finally` in it is not enough)."""

  def __init__(self, run: _Run, request: fastapi.Request):
    self._run = run
    self._request = request
    chunks = _chat_chunks(run) if run.plan.kind == "chat" else _completion_chunks(run)
    super().__init__(self._events(chunks), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

  async def _events(self, chunks: AsyncIterator[dict]):
    plan = self._run.plan
    try:
      async for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
      if plan.include_usage:
        usage = {**_chunk(plan, []), "usage": _usage(self._run)}
        yield f"data: {json.dumps(usage)}\n\n"
      yield "data: [DONE]\n\n"
    except APIError as e:  # The status is already sent: report in-band, as OpenAI does.
      yield f"data: {json.dumps(e.body())}\n\n"
    except Exception as e:  # pylint: disable=broad-except
      log.exception("streaming failed")
      yield f"data: {json.dumps(APIError(500, str(e), type='server_error').body())}\n\n"
    self._request.state.log = plan.log_line() + f" completion_tokens={self._run.completion_tokens} stream"

  async def __call__(self, scope, receive, send):
    try:
      await super().__call__(scope, receive, send)
    finally:
      self._run.close()


# ----------------------------------------------------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------------------------------------------------


def _add_error_handlers(app: fastapi.FastAPI) -> None:

  @app.exception_handler(APIError)
  async def api_error(request, e: APIError):
    del request
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

  @app.exception_handler(RequestValidationError)
  async def validation_error(request, e: RequestValidationError):
    del request
    errors = e.errors()
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = loc[0] if loc and not loc[0].isdigit() else None
    if first.get("type") == "json_invalid":
      message, param = f"The body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip(), None
    elif first.get("type") == "missing" and param:
      message = f"{param} is required"
    else:
      where = ".".join(loc) if loc else "body"
      message = f"{where}: {first.get('msg', 'invalid value')}"
      if "input" in first and not isinstance(first["input"], (dict, list)):
        message += f" (got {first['input']!r})"
    return JSONResponse(bad_request(message, param=param).body(), status_code=400)

  @app.exception_handler(StarletteHTTPException)
  async def http_error(request, e: StarletteHTTPException):
    if e.status_code == 404:
      message = f"Unknown route {request.method} {request.url.path}"
      error = APIError(404, message, code="not_found")
    else:
      error = APIError(e.status_code, str(e.detail), code=None)
    return JSONResponse(error.body(), status_code=e.status_code, headers=getattr(e, "headers", None))

  @app.exception_handler(Exception)
  async def server_error(request, e: Exception):
    del request
    log.exception("unexpected error")
    return JSONResponse(APIError(500, f"{type(e).__name__}: {e}", type="server_error").body(), status_code=500)

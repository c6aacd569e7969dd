"""An OpenAI-compatible HTTP server over the engine: `create_app(lm)` returns the FastAPI application.

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both stream as server-sent events), `GET /v1/models`,
`GET /health` (503 until the model is loaded and warmed up), `POST /tokenize`, `POST /detokenize`, `GET /metrics`
(JSON counters, the engine's compile counts among them).

Each choice of a request (prompt i, sample j: index i * n + j) is one engine request with its own slot and its
own random stream, `fold_in(fold_in(key(seed), j), step)`: a choice's tokens depend on its prompt, settings, seed
and j only, not on what else is being served. The text of a choice goes through `TextStream`, the same one
`lm.generate` / `lm.stream` use: it never splits a UTF-8 character and holds back text that may begin a stop
string, so a stop string never reaches the client, not even split across chunks, and the streamed text is the
non-streamed text.

The layers: `plans.py` turns a request into engine requests (validating it), `batcher.py` runs the engine's
`Scheduler` in a thread, `responses.py` turns engine events into text and renders responses or event streams;
`beams.py` runs beam-search requests whole, outside the slots.

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: a client's mistake is a 400 naming
the field (never a 5xx, which the `openai` client retries), an unknown route a 404, a full queue a 429 with
`Retry-After`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Optional, Union

import fastapi
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptjax.serve import batcher as batcher_lib
from gptjax.serve import beams
from gptjax.serve import plans
from gptjax.serve import protocol
from gptjax.serve import responses
from gptjax.serve.protocol import APIError, bad_request

log = logging.getLogger("gptjax.serve")


@dataclasses.dataclass
class ServerOptions:
  """How the server is set up.

  Attributes:
    model_name: The id served in /v1/models; requests must name it.
    num_slots: Requests decoded together (the engine's slot count).
    max_queue: Requests that may wait for a slot; beyond `num_slots + max_queue` a request gets a 429.
    max_length: Tokens per slot, prompt + completion (default: the model's context). Shorter makes every decode
      step cheaper: its attention reads the whole slot.
    steps_per_call: Decode steps per engine call (see `batcher.Batcher`); 1: a cancel frees its slot within a step.
    warm_up: Compile the decode step and every prompt bucket before /health says ok.
  """
  model_name: str = "gptjax"
  num_slots: int = 8
  max_length: Optional[int] = None
  steps_per_call: int = 1
  max_queue: int = 256
  warm_up: bool = True


class ServerState:
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
  state = ServerState(options)

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
    plans.check_model(state, body.model, required=False)
    if (body.prompt is None) == (body.messages is None):
      raise bad_request("give exactly one of `prompt` (a string) or `messages` (a conversation)", param="prompt")
    text = body.prompt if body.prompt is not None else protocol.render_chat(body.messages)
    ids = plans.encode(state, text, "prompt" if body.prompt is not None else "messages")
    return {"tokens": ids, "count": len(ids), "max_model_len": state.context}

  @app.post("/detokenize")
  async def detokenize(body: protocol.DetokenizeRequest):
    state.require_ready()
    plans.check_model(state, body.model, required=False)
    plans.check_ids(state, body.tokens, "tokens")
    return {"prompt": state.tokenizer.decode(body.tokens)}

  async def generate(body, request: fastapi.Request, plan_request):
    """Completions and chat alike: plan the request, start it on the engine, stream or collect the reply."""
    state.require_ready()
    plan = plan_request(state, body)
    request.state.log = plan.log_line()
    if plan.decoding is not None:  # Beam search / constrained decoding: one program, outside the slots.
      return await beams.respond(state, plan)
    run = responses.Run.start(state, plan)
    return responses.EventStream(run, request) if body.stream else await responses.collect(run, request)

  @app.post("/v1/completions")
  async def completions(body: protocol.CompletionRequest, request: fastapi.Request):
    return await generate(body, request, plans.plan_completion)

  @app.post("/v1/chat/completions")
  async def chat_completions(body: protocol.ChatCompletionRequest, request: fastapi.Request):
    return await generate(body, request, plans.plan_chat)

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


def _model_card(state: ServerState) -> dict:
  return {"id": state.options.model_name, "object": "model", "created": int(state.started), "owned_by": "gptjax",
          "max_model_len": state.context if state.ready else None}


# ----------------------------------------------------------------------------------------------------------------------
# Loading and warm-up.
# ----------------------------------------------------------------------------------------------------------------------


def _load_and_warm_up(state: ServerState, lm, loop: asyncio.AbstractEventLoop) -> None:
  from gptjax.inference import engine as engine_lib  # pylint: disable=g-import-not-at-top
  try:
    start = time.perf_counter()
    lm = lm() if callable(lm) and not hasattr(lm, "config") else lm
    if lm.tokenizer is None:
      raise ValueError("the model has no tokenizer files: the server needs one to read and write text")
    state.lm = lm
    state.engine = engine_lib.Engine(lm, num_slots=state.options.num_slots, max_length=state.options.max_length)
    scheduler = engine_lib.Scheduler(state.engine)
    state.batcher = batcher_lib.Batcher(scheduler, capacity=state.options.num_slots + state.options.max_queue,
                                    steps_per_call=state.options.steps_per_call)
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


async def _warm_up(state: ServerState) -> None:
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
    await state.batcher.call(lambda length=length: responses.prompt_logprobs(state, [0] * length, 1))


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

"""The explorer's routes: `POST /v1/explore` and the page at `GET /explorer`.

The app includes them with `app.include_router(explorer.router)`. The model comes from the app's state: the
server's `app.state.gptjax` (its `lm`, its `engine`, shared with the completions routes, and its `batcher`, whose
engine thread then runs each explore between two decode steps), or, for an app of one's own, `app.state.lm` (and
optionally `app.state.engine`). The work is `gptjax.explore.run`, the same function the notebook calls; the request
and reply schemas are in the README's "Explorer" section.

The page is static HTML, CSS and JavaScript from `gptjax/serve/static/` (package data): no CDN, no build step,
nothing fetched from elsewhere, so it works offline.
"""

from __future__ import annotations

import json
import pathlib
import threading

import fastapi
from fastapi import responses
from starlette.concurrency import run_in_threadpool

from gptjax import explore

STATIC = pathlib.Path(__file__).parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# One explore at a time: each is a full forward pass (two with ablations) that already uses every core.
_LOCK = threading.Lock()

router = fastapi.APIRouter()


def error_response(status: int, message: str, param=None, code=None) -> responses.JSONResponse:
  """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
  kind = "invalid_request_error" if status < 500 else "server_error"
  return responses.JSONResponse(
      {"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _model(app):
  """(lm, engine, batcher or None) from the app's state; lm is None while the model loads."""
  state = getattr(app.state, "gptjax", None) or app.state
  if not getattr(state, "ready", True):
    return None, None, None
  engine = getattr(state, "engine", None)
  lm = getattr(state, "lm", None) or getattr(engine, "lm", None)
  if lm is None:
    return None, None, None
  engine = engine if engine is not None and hasattr(engine, "forward") else explore.engine_for(lm)
  batcher = getattr(state, "batcher", None)
  return lm, engine, batcher if hasattr(batcher, "call") else None


@router.post("/v1/explore")
async def explore_route(request: fastapi.Request):
  """Tokens, next-token candidates, ranks, attention, logit lens and ablations for one text (README: Explorer)."""
  try:
    body = json.loads(await request.body())
  except (ValueError, UnicodeDecodeError) as e:
    return error_response(400, f"The request body is not valid JSON: {e}")
  lm, engine, batcher = _model(request.app)
  if lm is None:
    return error_response(503, "The model is loading; retry once GET /health returns 200", code="model_loading")
  try:
    parsed = explore.ExploreRequest.parse(lm, body)
  except explore.ExploreError as e:
    return error_response(400, str(e), e.param)

  def work():
    with _LOCK:
      return explore.run(engine, lm, parsed)

  # On the server's engine thread when there is one (the engine is not shared across threads), else off the loop.
  reply = await batcher.call(work) if batcher is not None else await run_in_threadpool(work)
  return responses.JSONResponse(reply)


@router.get("/explorer", include_in_schema=False)
async def page():
  return _static("index.html")


@router.get("/explorer/static/{name}", include_in_schema=False)
async def static_file(name: str):
  return _static(name)


def _static(name: str):
  # Only the files that are there, by their bare names: no paths, so nothing outside static/ can be reached.
  path = STATIC / name
  if "/" in name or "\\" in name or name.startswith(".") or not path.is_file() or path.suffix not in _TYPES:
    return error_response(404, f"No such explorer file: {name!r}")
  return responses.FileResponse(path, media_type=_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})

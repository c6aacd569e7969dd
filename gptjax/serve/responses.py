"""Engine events -> text, log-probs and finish reasons, rendered as OpenAI responses or server-sent events.

Each choice's text goes through `TextStream` (the one `lm.generate` uses): no split UTF-8 character, no stop string
or part of one. Streamed and non-streamed responses are two renderings of one loop (`Run.updates`), so they agree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import TYPE_CHECKING, AsyncIterator, Optional

import fastapi
import numpy as np
from fastapi.responses import StreamingResponse

from gptjax.inference.generation import TextStream
from gptjax.serve.plans import Choice, Plan
from gptjax.serve.protocol import APIError

if TYPE_CHECKING:
  from gptjax.serve.app import ServerState

log = logging.getLogger("gptjax.serve")


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

  def __init__(self, state: ServerState, plan: Plan, choice: Choice):
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


def prompt_logprobs(state: ServerState, ids: list[int], top_n: int) -> list[_Token]:
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


class Run:
  """A plan's choices in the engine: `start` admits them all at once (or raises the 429), `updates` yields their
  text as events arrive, `close` cancels whatever is still running (the client went away, or stopped reading)."""

  def __init__(self, state: ServerState, plan: Plan):
    self.state, self.plan = state, plan
    self.texts = {c.request_id: _ChoiceText(state, plan, c) for c in plan.choices}
    self.running: set[str] = set()
    self._sink: asyncio.Queue = asyncio.Queue()

  @classmethod
  def start(cls, state: ServerState, plan: Plan) -> "Run":
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
      # Everything that arrived since the last look, merged per choice: a client that keeps up gets a chunk per
      # token; under load a chunk carries several, so the event loop's work does not grow with the backlog.
      batch = [await self._sink.get()]
      while not self._sink.empty():
        batch.append(self._sink.get_nowait())
      merged: dict[int, _Update] = {}
      for request_id, event in batch:
        if isinstance(event, BaseException):
          raise event
        if request_id not in self.running:
          continue  # Already ended by a stop string; the engine's last events for it are dropped.
        update = self.texts[request_id].feed(event)
        if update.finish_reason is not None:
          self.running.discard(request_id)
          if event.finish_reason is None:  # A stop string ended it before the engine knew: free the slot.
            self.state.batcher.cancel(request_id)
        if update.index in merged:
          previous = merged[update.index]
          update = _Update(update.index, previous.text + update.text, previous.tokens + update.tokens,
                           update.finish_reason)
        merged[update.index] = update
      for index in sorted(merged):
        update = merged[index]
        if update.text or update.tokens or update.finish_reason:
          yield update

  def close(self) -> None:
    if self.running:
      log.info("%s: %d unfinished sequence(s) cancelled", self.plan.id, len(self.running))
    for request_id in self.running:
      self.state.batcher.cancel(request_id)
    self.running.clear()


def _usage(run: Run) -> dict:
  prompt = sum(len(p) for p in run.plan.prompts)
  completion = run.completion_tokens
  return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _echo_tokens(state: ServerState, plan: Plan) -> list[Optional[list[_Token]]]:
  if not (plan.echo and plan.logprobs is not None):
    return [None] * len(plan.prompts)
  return [await state.batcher.call(lambda p=p: prompt_logprobs(state, p, plan.logprobs)) for p in plan.prompts]


def _top_by_text(top: list[tuple[str, float]]) -> dict[str, float]:
  """The completions API's {text: logprob} of the most likely alternatives (most likely first). Tokens that decode
  to the same text (e.g. the partial UTF-8 bytes shown as U+FFFD) share one key, which keeps the most likely's
  log-probability, not the last one's."""
  merged: dict[str, float] = {}
  for text, logprob in top:
    merged[text] = max(merged.get(text, -float("inf")), logprob)
  return merged


def _completion_logprobs(tokens: list[_Token]) -> dict:
  return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
          "top_logprobs": [None if t.top is None else _top_by_text(t.top) for t in tokens],
          "text_offset": [t.offset for t in tokens]}


def _chat_logprobs(tokens: list[_Token]) -> dict:
  def entry(text, logprob):
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
  return {"content": [{**entry(t.text, t.logprob), "top_logprobs": [entry(s, lp) for s, lp in t.top or []]}
                      for t in tokens]}


async def collect(run: Run, request: fastapi.Request) -> dict:
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


def _chunk(plan: Plan, choices: list[dict]) -> dict:
  chunk = {"id": plan.id, "object": "chat.completion.chunk" if plan.kind == "chat" else "text_completion",
           "created": plan.created, "model": plan.model, "choices": choices}
  if plan.include_usage:
    chunk["usage"] = None  # OpenAI: null in every chunk but the last, which has the usage and no choices.
  return chunk


async def _completion_chunks(run: Run) -> AsyncIterator[dict]:
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


async def _chat_chunks(run: Run) -> AsyncIterator[dict]:
  plan = run.plan
  for c in plan.choices:  # OpenAI opens each choice with its role.
    yield _chunk(plan, [{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}])
  async for update in run.updates():
    delta = {"content": update.text} if update.text or not update.finish_reason else {}
    yield _chunk(plan, [{"index": update.index, "delta": delta,
                         "logprobs": None if plan.logprobs is None else _chat_logprobs(update.tokens),
                         "finish_reason": update.finish_reason}])


class EventStream(StreamingResponse):
  """A StreamingResponse that cancels its run however it ends: finished, failed, or the client gone (Starlette
  then cancels the body task, possibly before the generator ever started, so a `finally` in it is not enough)."""

  def __init__(self, run: Run, request: fastapi.Request):
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

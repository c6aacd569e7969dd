"""The bridge between asyncio request handlers and the engine's synchronous `Scheduler`: one background thread.

The thread owns the engine: every engine call (submit, cancel, the decode step, one-off forwards for `echo`
log-probs) happens on it, so the engine never sees two threads. Between two decode steps it drains an inbox of
submissions and cancellations, so a cancelled request (a client that went away, a stop string found by the text
layer) leaves its slot before the next step: it costs at most the one step already running. The events of a step
are handed to the event loop in one `call_soon_threadsafe`, which puts each on its request's `asyncio.Queue`.

Accounting (`outstanding`, the 429 check) lives on the event loop thread only, so a check-then-submit cannot race.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import queue
import threading
import time
from typing import Any, Callable, Optional

log = logging.getLogger("gptjax.serve")


@dataclasses.dataclass
class Stats:
  """Counters for /metrics."""
  steps: int = 0
  tokens: int = 0
  submitted: int = 0
  finished: int = 0
  cancelled: int = 0
  step_seconds: float = 0.0
  # Decode steps run between a cancel's arrival and its slot being freed: 0 when it lands between steps, 1 when
  # it arrived while a step was running. Anything higher would be a bug.
  max_steps_to_cancel: int = 0


class Batcher:
  """Runs `scheduler.step()` in a thread while there is work; routes its events to per-request queues.

  Args:
    scheduler: The engine's `Scheduler` (submit / cancel / has_work / step).
    capacity: Most requests (choices) admitted at once, running or waiting; more is a 429.
    steps_per_call: Decode steps per `scheduler.step` call (one compiled loop, one host round trip). 1 keeps the
      promise that a cancelled request stops within one step; more trades that (and streaming granularity) for
      throughput where the host round trip is a large part of a step.
  """

  def __init__(self, scheduler, capacity: int, steps_per_call: int = 1):
    self.scheduler = scheduler
    self.capacity = capacity
    self.steps_per_call = steps_per_call
    self.stats = Stats()
    self.outstanding = 0
    self._sinks: dict[Any, asyncio.Queue] = {}
    self._loop: Optional[asyncio.AbstractEventLoop] = None
    self._inbox: queue.SimpleQueue = queue.SimpleQueue()
    self._wake = threading.Event()
    self._stop = False
    self._ids = itertools.count()
    self._thread = threading.Thread(target=self._run, name="gptjax-batcher", daemon=True)

  def start(self, loop: asyncio.AbstractEventLoop) -> None:
    self._loop = loop
    self._thread.start()

  def close(self) -> None:
    self._stop = True
    self._wake.set()
    if self._thread.is_alive():
      self._thread.join(timeout=30)

  # ---- Event-loop side -----------------------------------------------------------------------------------------

  def new_id(self, prefix: str) -> str:
    return f"{prefix}-{next(self._ids)}"

  def has_room(self, count: int) -> bool:
    return self.outstanding + count <= self.capacity

  def submit(self, request_id, prompt_ids: list[int], settings, sink: asyncio.Queue) -> None:
    """Queues a request; its events go to `sink` as `(request_id, event)`. Call on the event loop."""
    self._sinks[request_id] = sink
    self.outstanding += 1
    self.stats.submitted += 1
    self._inbox.put(("submit", request_id, prompt_ids, settings))
    self._wake.set()

  def cancel(self, request_id) -> None:
    """Drops a request (no more events); its slot is freed before the next decode step. Call on the event loop."""
    if self._sinks.pop(request_id, None) is not None:
      self.outstanding -= 1
      self.stats.cancelled += 1
      self._inbox.put(("cancel", request_id, self.stats.steps, None))
      self._wake.set()

  async def call(self, fn: Callable[[], Any]) -> Any:
    """Runs `fn()` on the engine thread between two steps (e.g. a forward pass for prompt log-probs)."""
    future = self._loop.create_future()
    self._inbox.put(("call", fn, future, None))
    self._wake.set()
    return await future

  def _dispatch(self, events) -> None:
    for event in events:
      sink = self._sinks.get(event.request_id)
      if sink is None:
        continue  # Cancelled while the step ran.
      sink.put_nowait((event.request_id, event))
      if event.finish_reason is not None:
        del self._sinks[event.request_id]
        self.outstanding -= 1
        self.stats.finished += 1

  def _fail(self, error: BaseException) -> None:
    for request_id, sink in list(self._sinks.items()):
      sink.put_nowait((request_id, error))
    self.outstanding -= len(self._sinks)
    self._sinks.clear()

  # ---- Engine thread -------------------------------------------------------------------------------------------

  def _drain(self) -> None:
    while True:
      try:
        kind, a, b, c = self._inbox.get_nowait()
      except queue.Empty:
        return
      if kind == "submit":
        try:
          self.scheduler.submit(a, b, c)
        except Exception as e:  # pylint: disable=broad-except  (validated upstream: a bug if it happens)
          log.exception("submit failed")
          self._loop.call_soon_threadsafe(self._dispatch_error, a, e)
      elif kind == "cancel":
        self.scheduler.cancel(a)
        self.stats.max_steps_to_cancel = max(self.stats.max_steps_to_cancel, self.stats.steps - b)
      else:
        try:
          result = a()
        except Exception as e:  # pylint: disable=broad-except
          self._loop.call_soon_threadsafe(_settle, b, None, e)
        else:
          self._loop.call_soon_threadsafe(_settle, b, result, None)

  def _dispatch_error(self, request_id, error) -> None:
    sink = self._sinks.pop(request_id, None)
    if sink is not None:
      self.outstanding -= 1
      sink.put_nowait((request_id, error))

  def _run(self) -> None:
    while not self._stop:
      self._drain()
      if not self.scheduler.has_work():
        self._wake.wait(timeout=0.5)
        self._wake.clear()
        continue
      start = time.perf_counter()
      try:
        events = self.scheduler.step(self.steps_per_call) if self.steps_per_call > 1 else self.scheduler.step()
      except Exception as e:  # pylint: disable=broad-except  (an engine bug: fail the requests, keep serving)
        log.exception("decode step failed")
        self._loop.call_soon_threadsafe(self._fail, e)
        continue
      self.stats.step_seconds += time.perf_counter() - start
      self.stats.steps += 1
      self.stats.tokens += len(events)
      if events:
        self._loop.call_soon_threadsafe(self._dispatch, events)


def _settle(future: asyncio.Future, result, error) -> None:
  if future.done():
    return
  if error is not None:
    future.set_exception(error)
  else:
    future.set_result(result)


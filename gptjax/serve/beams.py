"""Beam search and constrained decoding over HTTP: a request run as one program, outside the slot batch.

The engine's slots (`engine.Scheduler`) decode independent rows, one token per step, and can take a request in or
out between two steps. A beam's rows are not independent: every step reorders them by the beam each continues, and
a prompt ends only when its search does (`gptjax/inference/beam.py`). So a request with `num_beams` > 1,
`no_repeat_ngram_size` or `min_new_tokens` is not put in the slots: the batcher's thread runs the whole of it as
`beam.generate` (the very function behind `lm.generate(..., num_beams=...)`), between two decode steps of the
slots. The design's costs, stated:
  - slot requests in flight wait while a beam request runs (one device, one program at a time), and the first
    beam request of a shape compiles its program (the warm-up does not);
  - the reply comes whole: `stream=true` is a 400 naming `stream`, as are `logprobs` and the sampling settings
    beam search does not use (see `plans.decoding_options`);
  - a client that goes away does not stop a search already running.
The result is `lm.generate`'s for the same prompt ids, stops and seed, token for token: the stop strings are
matched on the text by the same `TextStream`. `finish_reason` is 'stop' when a sequence ended at `<|endoftext|>`
or a stop, else 'length'; `usage.completion_tokens` counts the returned tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptjax.inference import beam
from gptjax.inference.generation import TextStream
from gptjax.inference.sampling import SamplingParams
from gptjax.serve.plans import Plan
from gptjax.serve.protocol import bad_request

if TYPE_CHECKING:
  from gptjax.serve.app import ServerState


def _generate(state: ServerState, plan: Plan) -> list[tuple[list[int], str, str]]:
  """(ids, text, finish_reason) per choice; runs on the engine thread."""
  first = plan.choices[0].settings
  eos = state.tokenizer.eos_id
  stop_at_eos = eos is not None and (eos,) in first.stop_token_ids
  stops = [list(s) for s in first.stop_token_ids if s != (eos,)] or None
  strategy = SamplingParams(first.temperature, first.top_k, first.top_p)
  outputs = beam.generate(state.lm, plan.prompts, first.max_tokens, strategy, seed=first.seed, stop=stops,
                          stop_at_eos=stop_at_eos, **plan.decoding)
  results = []
  for choice, ids in zip(plan.choices, outputs, strict=True):
    text = TextStream(state.tokenizer, plan.prompts[choice.prompt], plan.stops)
    body = text.push(ids)
    body += "" if text.stopped else text.finish()
    reason = "stop" if text.stopped or len(ids) < first.max_tokens else "length"
    results.append((ids, body, reason))
  return results


async def respond(state: ServerState, plan: Plan) -> dict:
  """The whole response of a beam / constrained request (completion or chat)."""
  try:
    results = await state.batcher.call(lambda: _generate(state, plan))
  except ValueError as e:  # What the plan's checks did not catch is still the request's fault: a 400, not a 500.
    raise bad_request(str(e)) from None
  chat = plan.kind == "chat"
  choices = []
  for choice, (_, text, reason) in zip(plan.choices, results):
    if plan.echo:
      text = plan.prompt_texts[choice.prompt] + text
    if chat:
      choices.append({"index": choice.index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": reason})
    else:
      choices.append({"index": choice.index, "text": text, "logprobs": None, "finish_reason": reason})
  prompt_tokens = sum(len(p) for p in plan.prompts)
  completion_tokens = sum(len(ids) for ids, _, _ in results)
  return {"id": plan.id, "object": "chat.completion" if chat else "text_completion", "created": plan.created,
          "model": plan.model, "choices": choices,
          "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}}

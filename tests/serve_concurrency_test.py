"""Continuous batching as clients see it (gptjax/serve/batcher.py): many streams at once through a
`python -m gptjax.serve` subprocess.

64 concurrent streaming requests with random prompts, lengths, temperatures and seeds, against 8 slots: every stream
completes, its text equals the same request's non-streamed text and token count, greedy ones equal `lm.generate` of
that prompt alone, and nothing recompiles after warm-up. A request that joins a running batch gets the tokens it
gets alone.
"""

import asyncio
import random

import openai
import pytest

import gptjax
from tests import serve_helpers
from tests.serve_helpers import MODEL_NAME, WORDS

NUM_REQUESTS = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return serve_helpers.save_tiny_model(tmp_path_factory.mktemp("serve_concurrency") / "model")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
  s = serve_helpers.Server(model_dir, tmp_path_factory.mktemp("serve_concurrency_log") / "server.log",
                           "--num_slots=8", "--max_queue=64")
  yield s
  s.close()


def _requests(seed: int, count: int) -> list[dict]:
  rng = random.Random(seed)
  out = []
  for i in range(count):
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
    out.append(dict(model=MODEL_NAME, prompt=prompt, max_tokens=rng.randint(1, 24),
                    temperature=0.0 if i % 3 == 0 else rng.choice([0.7, 1.0, 1.5]), seed=rng.randrange(2**31)))
  return out


async def _stream(client: openai.AsyncOpenAI, body: dict):
  """The streamed text, finish reason and usage of one request."""
  text, reasons, usage = "", [], None
  async for chunk in await client.completions.create(**body, stream=True, stream_options={"include_usage": True}):
    if chunk.usage is not None:
      usage = chunk.usage.completion_tokens
    for choice in chunk.choices:
      assert choice.index == 0
      text += choice.text
      reasons.append(choice.finish_reason)
  assert reasons and all(r is None for r in reasons[:-1]) and reasons[-1] in ("stop", "length"), reasons
  return text, reasons[-1], usage


def test_64_concurrent_streams(server, model_dir):
  before = server.metrics()
  assert before["trace_counts"] == before["trace_counts_after_warm_up"]
  bodies = _requests(0, NUM_REQUESTS)

  async def main():
    client = openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=300)
    streamed = await asyncio.gather(*[_stream(client, b) for b in bodies])
    single = []
    for b in bodies:  # One at a time: the reference for the batched streams.
      single.append(await client.completions.create(**b))
    return streamed, single

  streamed, single = asyncio.run(main())
  for body, (text, reason, completion_tokens), full in zip(bodies, streamed, single):
    assert (text, reason) == (full.choices[0].text, full.choices[0].finish_reason), body
    assert completion_tokens == full.usage.completion_tokens, body  # No token lost or duplicated.
    assert 1 <= completion_tokens <= body["max_tokens"]
  lm = gptjax.load(model_dir)
  greedy = [(b, s[0]) for b, s in zip(bodies, streamed) if b["temperature"] == 0]
  assert len(greedy) > 16
  for body, text in greedy:
    assert text == lm.generate([body["prompt"]], body["max_tokens"], temperature=0)[0], body
  after = server.metrics()
  assert after["trace_counts"] == before["trace_counts"]  # Flat after warm-up: no request waited on XLA.
  assert after["outstanding"] == 0 and after["requests_finished"] - before["requests_finished"] == 2 * NUM_REQUESTS


def test_request_joining_a_running_batch_gets_its_tokens_alone(server):
  probe = dict(model=MODEL_NAME, prompt="the quick fox", max_tokens=20, temperature=1.2, seed=77)
  background = [dict(model=MODEL_NAME, prompt=b["prompt"], max_tokens=40, temperature=1.0, seed=b["seed"],
                     extra_body={"ignore_eos": True}) for b in _requests(1, 12)]

  async def main():
    client = openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=300)
    alone = (await client.completions.create(**probe, logprobs=1)).choices[0]
    streams = [await client.completions.create(**b, stream=True) for b in background]
    firsts = [await anext(aiter(s)) for s in streams]  # Every background request is decoding (or queued) now.
    assert all(f.choices for f in firsts)
    joined = (await client.completions.create(**probe, logprobs=1)).choices[0]
    for s in streams:
      async for _ in s:
        pass
    return alone, joined

  alone, joined = asyncio.run(main())
  assert joined.text == alone.text and joined.logprobs.tokens == alone.logprobs.tokens
  assert joined.logprobs.token_logprobs == pytest.approx(alone.logprobs.token_logprobs, abs=1e-4)

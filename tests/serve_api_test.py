"""The OpenAI API of `python -m gptjax.serve`, through the real `openai` client, against a server subprocess
(gptjax/serve/__main__.py, app.py, plans.py, protocol.py, responses.py).

One server (4 slots, room for 64 sequences) over a tiny random model with a byte-level BPE tokenizer serves the
whole module. Expected values come from the same saved model loaded here (`lm.generate`, `lm.logits`).
"""

import asyncio
import json
import urllib.request

import numpy as np
import openai
import pytest

import gptjax
from gptjax.serve import protocol
from tests import serve_helpers
from tests.serve_helpers import MODEL_NAME

PROMPT = "Hello world 😀"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return serve_helpers.save_tiny_model(tmp_path_factory.mktemp("serve_api") / "model")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
  s = serve_helpers.Server(model_dir, tmp_path_factory.mktemp("serve_api_log") / "server.log",
                           "--num_slots=4", "--max_queue=60")
  yield s
  s.close()


@pytest.fixture(scope="module")
def lm(model_dir):
  return gptjax.load(model_dir)


class Counter:
  """Counts the HTTP requests a client sends (retries included)."""

  def __init__(self):
    self.count = 0

  def __call__(self, request):
    del request
    self.count += 1


def client_for(server, counter=None, max_retries=0):
  hooks = {"request": [counter]} if counter else {}
  return openai.OpenAI(base_url=server.url, api_key="x", max_retries=max_retries,
                       http_client=openai.DefaultHttpxClient(event_hooks=hooks))


@pytest.fixture(scope="module")
def client(server):
  return client_for(server)


def raw_stream(server, route: str, body: dict) -> list:
  """The parsed `data:` events of a streamed request, read off the wire ('[DONE]' kept as a string)."""
  request = urllib.request.Request(server.root + route, data=json.dumps({**body, "stream": True}).encode(),
                                   headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=120) as response:
    assert response.headers["Content-Type"].startswith("text/event-stream")
    text = response.read().decode()
  events = [block for block in text.split("\n\n") if block]
  assert all(e.startswith("data: ") for e in events), text[:500]
  return [e[len("data: "):] if e == "data: [DONE]" else json.loads(e[len("data: "):]) for e in events]


def joined(chunks, field="text") -> dict:
  """Per choice index: the joined text of its chunks; checks finish_reason is null in all but the last."""
  texts, finished = {}, {}
  for chunk in chunks:
    for choice in chunk["choices"]:
      i = choice["index"]
      assert i not in finished, f"choice {i} got a chunk after its finish_reason"
      piece = choice[field] if field == "text" else choice["delta"].get("content", "")
      texts[i] = texts.get(i, "") + (piece or "")
      if choice["finish_reason"] is not None:
        finished[i] = choice["finish_reason"]
  assert set(finished) == set(texts), (finished, texts)
  return {i: (texts[i], finished[i]) for i in texts}


def test_health_is_503_until_warmed_up(server):
  statuses = [s for s in server.health_statuses if s is not None]
  assert statuses[0] == 503 and statuses[-1] == 200, server.health_statuses
  assert server.get("/health") == (200, {"status": "ok", "model": MODEL_NAME})


def test_models_tokenize_detokenize(server, client, lm):
  assert [m.id for m in client.models.list().data] == [MODEL_NAME]
  status, _, body = server.post("/tokenize", json.dumps({"prompt": PROMPT}).encode())
  assert status == 200 and body["tokens"] == lm.tokenizer.encode(PROMPT) and body["count"] == len(body["tokens"])
  assert body["max_model_len"] == lm.config.block_size
  status, _, body = server.post("/detokenize", json.dumps({"tokens": body["tokens"]}).encode())
  assert (status, body) == (200, {"prompt": PROMPT})
  messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
  status, _, body = server.post("/tokenize", json.dumps({"messages": messages}).encode())
  assert body["tokens"] == lm.tokenizer.encode("System: Be brief.\nUser: Hi\nAssistant:")


def test_greedy_completion_is_lm_generate(client, lm):
  for prompt, max_tokens in [(PROMPT, 12), ("the fox", 20), ("日本語", 5)]:
    result = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0)
    assert result.object == "text_completion" and result.model == MODEL_NAME and result.id.startswith("cmpl-")
    choice = result.choices[0]
    assert choice.text == lm.generate([prompt], max_tokens, temperature=0)[0]
    assert choice.finish_reason in ("stop", "length") and choice.index == 0
    assert result.usage.prompt_tokens == len(lm.tokenizer.encode(prompt))
    assert 1 <= result.usage.completion_tokens <= max_tokens
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_prompt_forms(client, lm):
  ids = lm.tokenizer.encode("the fox")
  by_text = client.completions.create(model=MODEL_NAME, prompt="the fox", max_tokens=6, temperature=0)
  by_ids = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=6, temperature=0)
  assert by_ids.choices[0].text == by_text.choices[0].text
  several = client.completions.create(model=MODEL_NAME, prompt=[PROMPT, "the fox"], max_tokens=6, temperature=0,
                                      n=2)
  assert [c.index for c in several.choices] == [0, 1, 2, 3]
  assert several.choices[2].text == several.choices[3].text == by_text.choices[0].text  # Greedy: n copies.
  lists = client.completions.create(model=MODEL_NAME, prompt=[ids, ids], max_tokens=6, temperature=0)
  assert [c.text for c in lists.choices] == [by_text.choices[0].text] * 2


def test_streaming_equals_non_streaming_with_n_3_and_usage(server, client):
  body = dict(model=MODEL_NAME, prompt=PROMPT, max_tokens=14, temperature=1.2, seed=11, n=3)
  full = client.completions.create(**body)
  chunks = raw_stream(server, "/v1/completions", body)
  assert chunks[-1] == "[DONE]"
  chunks = chunks[:-1]
  assert all("usage" not in c for c in chunks)  # Not asked for.
  assert all(len(c["choices"]) == 1 and c["id"] == chunks[0]["id"] for c in chunks)
  assert sorted({c["choices"][0]["index"] for c in chunks}) == [0, 1, 2]
  streamed = joined(chunks)
  assert streamed == {c.index: (c.text, c.finish_reason) for c in full.choices}
  assert len({c.text for c in full.choices}) > 1  # Each choice has its own random stream.

  with_usage = raw_stream(server, "/v1/completions", {**body, "stream_options": {"include_usage": True}})[:-1]
  assert all(c["usage"] is None for c in with_usage[:-1])
  assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"] == full.usage.model_dump(exclude_none=True)
  assert joined(with_usage[:-1]) == streamed

  # The client's own streaming parser sees the same.
  pieces = {}
  for chunk in client.completions.create(**body, stream=True):
    pieces[chunk.choices[0].index] = pieces.get(chunk.choices[0].index, "") + chunk.choices[0].text
  assert pieces == {c.index: c.text for c in full.choices}


def _spanning_stop(result):
  """A two-character stop string made of the last character of one token and the first of the next."""
  text, lp = result.choices[0].text, result.choices[0].logprobs
  for i in range(len(lp.tokens) - 1):
    a, b = lp.tokens[i], lp.tokens[i + 1]
    if a and b and a[-1] != "\ufffd" and b[0] != "\ufffd":
      stop = a[-1] + b[0]
      if text.find(stop) == lp.text_offset[i + 1] - 1 and len(a) + len(b) > 2:
        return stop, text[:text.find(stop)]
  raise AssertionError(f"no token boundary to put a stop string across in {lp.tokens}")


def test_stop_string_across_tokens_never_leaks(server, client):
  for prompt in ["the fox", PROMPT]:
    # Sampled, not greedy (a random model's greedy path repeats one token); the seed fixes the tokens, and stop
    # strings do not change them, only where the text ends.
    base = dict(model=MODEL_NAME, prompt=prompt, max_tokens=30, temperature=1.0, seed=3)
    plain = client.completions.create(**base, logprobs=0)
    stop, expected = _spanning_stop(plain)
    result = client.completions.create(**base, stop=[stop, "never-there"])
    assert (result.choices[0].text, result.choices[0].finish_reason) == (expected, "stop")
    chunks = raw_stream(server, "/v1/completions", {**base, "stop": stop})[:-1]
    assert joined(chunks) == {0: (expected, "stop")}
    assert not any(stop in c["choices"][0]["text"] for c in chunks)
    chat = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": prompt}],
                                          max_tokens=30, temperature=0)
    assert protocol.CHAT_STOPS[0] not in chat.choices[0].message.content


def _log_softmax(logits_TV, vocab):
  x = logits_TV[:, :vocab].astype(np.float64)
  return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def test_logprobs_match_the_model(client, lm):
  result = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=10, temperature=0, logprobs=3)
  choice, lp = result.choices[0], result.choices[0].logprobs
  assert "".join(lp.tokens) == choice.text
  assert lp.text_offset == list(np.cumsum([0] + [len(t) for t in lp.tokens[:-1]]))
  prompt_ids = lm.tokenizer.encode(PROMPT)
  generated = lm.generate([prompt_ids], 10, temperature=0)[0]
  assert len(lp.token_logprobs) == len(generated)
  logp_TV = _log_softmax(lm.logits(prompt_ids + generated)[0], lm.tokenizer.vocab_size)
  for t, (token_id, logprob, top) in enumerate(zip(generated, lp.token_logprobs, lp.top_logprobs)):
    row = logp_TV[len(prompt_ids) + t - 1]
    np.testing.assert_allclose(logprob, row[token_id], atol=2e-4)
    assert len(top) <= 3 and max(top.values()) == pytest.approx(row.max(), abs=2e-4)  # Greedy = the best.


def test_echo_with_prompt_logprobs(server, client, lm):
  ids = lm.tokenizer.encode(PROMPT)
  result = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0, echo=True,
                                     logprobs=2)
  lp = result.choices[0].logprobs
  plain = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0)
  assert result.choices[0].text == PROMPT + plain.choices[0].text
  assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
  assert "".join(lp.tokens) == result.choices[0].text and lp.text_offset[0] == 0
  logp_TV = _log_softmax(lm.logits(ids)[0], lm.tokenizer.vocab_size)
  np.testing.assert_allclose(lp.token_logprobs[1:len(ids)], [logp_TV[t - 1, ids[t]] for t in range(1, len(ids))],
                             atol=2e-4)
  # max_tokens=0 with echo scores the prompt alone (what lm-eval's loglikelihood asks for).
  only = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
  assert only.choices[0].text == PROMPT and only.choices[0].logprobs.token_logprobs == lp.token_logprobs[:len(ids)]
  streamed = raw_stream(server, "/v1/completions", dict(model=MODEL_NAME, prompt=PROMPT, max_tokens=4,
                                                        temperature=0, echo=True))[:-1]
  assert joined(streamed) == {0: (result.choices[0].text, result.choices[0].finish_reason)}
  assert streamed[0]["choices"][0]["text"].startswith(PROMPT)


def test_seed_reproducible_and_choices_independent(client):
  body = dict(model=MODEL_NAME, prompt="the quick", max_tokens=16, temperature=1.5)
  a = client.completions.create(**body, seed=5).choices[0].text
  assert client.completions.create(**body, seed=5).choices[0].text == a
  assert client.completions.create(**body, seed=6).choices[0].text != a
  # Choice 0 of n=3 is the n=1 request's choice: a choice's stream depends on (seed, its index) alone.
  assert client.completions.create(**body, seed=5, n=3).choices[0].text == a
  # Other prompts in the same request do not change it either.
  assert client.completions.create(**{**body, "prompt": ["the quick", "dog"]}, seed=5).choices[0].text == a


def test_extensions_top_k_and_repetition_penalty(client, lm):
  body = dict(model=MODEL_NAME, prompt="the fox", max_tokens=10)
  greedy = client.completions.create(**body, temperature=0).choices[0].text
  # top_k=1 is greedy whatever the temperature.
  assert client.completions.create(**body, temperature=1.5, extra_body={"top_k": 1}).choices[0].text == greedy
  penalised = client.completions.create(**body, temperature=0, extra_body={"repetition_penalty": 1.8})
  assert penalised.choices[0].text == lm.generate(["the fox"], 10, temperature=0, repetition_penalty=1.8)[0]


def test_chat_completion_streamed_and_not(server, client, lm):
  messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello world"}]
  body = dict(model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0.9, seed=3, n=2)
  full = client.chat.completions.create(**body)
  assert full.object == "chat.completion" and full.id.startswith("chatcmpl-")
  assert all(c.message.role == "assistant" for c in full.choices)
  template = "System: You are terse.\nUser: Hello world\nAssistant:"
  assert full.usage.prompt_tokens == len(lm.tokenizer.encode(template))
  chunks = raw_stream(server, "/v1/chat/completions", body)
  assert chunks[-1] == "[DONE]" and all(c["object"] == "chat.completion.chunk" for c in chunks[:-1])
  first = {c["choices"][0]["index"]: c["choices"][0]["delta"] for c in reversed(chunks[:-1])}
  assert first == {0: {"role": "assistant", "content": ""}, 1: {"role": "assistant", "content": ""}}
  assert joined(chunks[:-1], field="delta") == {c.index: (c.message.content, c.finish_reason) for c in full.choices}
  greedy = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0,
                                          logprobs=True, top_logprobs=2)
  content = greedy.choices[0].logprobs.content
  assert "".join(t.token for t in content) == greedy.choices[0].message.content
  assert all(len(t.top_logprobs) == 2 for t in content)
  assert greedy.choices[0].message.content == lm.generate([template], 12, temperature=0,
                                                          stop=list(protocol.CHAT_STOPS))[0]


ERRORS = [
    (dict(temperature=-1), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(n=0), "n"),
    (dict(max_tokens=-3), "max_tokens"),
    (dict(max_tokens=64), "prompt"),  # prompt + max_tokens > the 64-token context.
    (dict(model="gpt-4"), "model"),
    (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
    (dict(logprobs=9), "logprobs"),
    (dict(prompt=[5, 99999]), "prompt"),
    (dict(prompt=[]), "prompt"),
    (dict(presence_penalty=3), "presence_penalty"),
    (dict(extra_body={"top_k": -1}), "top_k"),
    (dict(extra_body={"repetition_penalty": 0}), "repetition_penalty"),
    (dict(logit_bias={"5": 1.0}), "logit_bias"),
    (dict(n=65), "n"),  # More sequences than the server ever admits at once.
]


@pytest.mark.parametrize("change,param", ERRORS, ids=[p for _, p in ERRORS])
def test_bad_values_are_400_naming_the_field_and_not_retried(server, change, param):
  counter = Counter()
  client = client_for(server, counter, max_retries=2)
  body = {"model": MODEL_NAME, "prompt": "the fox", "max_tokens": 4, **change}
  with pytest.raises(openai.BadRequestError) as error:
    client.completions.create(**body)
  assert error.value.status_code == 400 and counter.count == 1  # A 400 is final: the client does not retry.
  assert error.value.body["param"] == param and error.value.body["type"] == "invalid_request_error"
  assert error.value.body["message"]
  if param == "prompt" and change.get("max_tokens"):
    assert error.value.body["code"] == "context_length_exceeded"


def test_other_errors_have_openai_shape(server, client):
  for route, body, param in [("/v1/completions", b"{not json", None), ("/v1/completions", b"{}", "model"),
                             ("/v1/completions", b'{"model": "tiny"}', "prompt"),
                             ("/v1/chat/completions", b'{"model": "tiny", "messages": []}', "messages"),
                             ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "x"}]}', "messages")]:
    status, _, error = server.post(route, body)
    assert status == 400 and set(error["error"]) == {"message", "type", "param", "code"}, (body, error)
    assert error["error"]["param"] == param, (body, error)
  status, _, error = server.post("/v1/nothing", b"{}")
  assert status == 404 and error["error"]["type"] == "invalid_request_error"
  assert server.get("/v2/models")[0] == 404
  with pytest.raises(openai.NotFoundError):
    client.embeddings.create(model=MODEL_NAME, input="x")
  with pytest.raises(openai.BadRequestError) as error:
    client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], max_tokens=80)
  assert error.value.body["param"] == "messages" and error.value.body["code"] == "context_length_exceeded"


def test_full_queue_is_429_with_retry_after(server):
  """Twelve requests of n=8 at once ask for 96 sequences where 64 fit: some get a 429; the rest complete."""

  async def main():
    client = openai.AsyncOpenAI(base_url=server.url, api_key="x", max_retries=0)
    calls = [client.completions.with_raw_response.create(model=MODEL_NAME, prompt="the", max_tokens=40, n=8,
                                                         extra_body={"ignore_eos": True})
             for _ in range(12)]
    return await asyncio.gather(*calls, return_exceptions=True)

  results = asyncio.run(main())
  limited = [r for r in results if isinstance(r, openai.RateLimitError)]
  served = [r for r in results if not isinstance(r, Exception)]
  assert limited and served and len(limited) + len(served) == 12, results
  assert all(r.response.headers["retry-after"] == "1" and r.body["type"] == "rate_limit_error" for r in limited)
  assert all(len(r.parse().choices) == 8 for r in served)
  assert server.metrics()["outstanding"] == 0


def test_disconnect_cancels_within_a_step(server, client):
  before = server.metrics()
  stream = client.completions.create(model=MODEL_NAME, prompt="the", max_tokens=60, temperature=1.0, seed=1,
                                     stream=True)
  next(iter(stream))
  stream.close()
  for _ in range(200):  # The server notices the closed socket asynchronously: poll, bounded.
    after = server.metrics()
    if after["requests_cancelled"] > before["requests_cancelled"] and after["outstanding"] == 0:
      break
    asyncio.run(asyncio.sleep(0.05))
  assert after["requests_cancelled"] == before["requests_cancelled"] + 1, after
  assert after["outstanding"] == 0 and after["max_steps_to_cancel"] <= 1
  assert after["tokens_generated"] - before["tokens_generated"] < 60

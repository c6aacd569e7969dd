"""Beam search and constrained decoding over HTTP (gptjax/serve/beams.py), through the real `openai` client against a
`python -m gptjax.serve` subprocess: the choices equal `lm.generate`'s on the same saved model, and the settings a
beam request cannot honour are a 400 naming the field."""

import openai
import pytest

import gptjax
from tests import serve_helpers
from tests.serve_helpers import MODEL_NAME
from gptjax.serve import protocol

PROMPT = "the quick fox"
N = 12  # max_tokens of every request here.


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return serve_helpers.save_tiny_model(tmp_path_factory.mktemp("serve_beam") / "model")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
  s = serve_helpers.Server(model_dir, tmp_path_factory.mktemp("serve_beam_log") / "server.log", "--num_slots=2",
                           "--max_queue=14")
  yield s
  s.close()


@pytest.fixture(scope="module")
def lm(model_dir):
  return gptjax.load(model_dir)


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=server.url, api_key="x", max_retries=0)


def _eos_free(lm, text):
  """A stop string the greedy continuation of `text` contains, so that some beams end on it."""
  greedy = lm.generate([text], N, temperature=0, stop_at_eos=False)[0]
  return greedy[len(greedy) // 2:len(greedy) // 2 + 2]


def test_beam_completion_equals_lm_generate(client, lm):
  stop = _eos_free(lm, PROMPT)
  options = dict(num_beams=4, length_penalty=0.5, early_stopping=True, no_repeat_ngram_size=2)
  response = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=N, n=3, stop=[stop],
                                       extra_body=options)
  expected = lm.generate([PROMPT], N, stop=[stop], num_return_sequences=3, **options)
  assert [c.index for c in response.choices] == [0, 1, 2]
  assert [c.text for c in response.choices] == expected
  for choice in response.choices:
    assert choice.finish_reason in ("stop", "length")
  assert response.usage.prompt_tokens == len(lm.tokenizer.encode(PROMPT))


def test_ragged_token_id_prompts_with_beams_equal_lm_generate(client, lm):
  prompts = [lm.tokenizer.encode("the fox"), lm.tokenizer.encode("Hello world, the quick brown dog")]
  assert len(prompts[0]) != len(prompts[1])
  response = client.completions.create(model=MODEL_NAME, prompt=prompts, max_tokens=N, echo=True,
                                       extra_body={"num_beams": 3, "num_return_sequences": 2, "min_new_tokens": 5})
  expected = lm.generate(prompts, N, num_beams=3, num_return_sequences=2, min_new_tokens=5)
  texts = [lm.tokenizer.decode(prompts[i // 2]) + lm.tokenizer.decode(ids) for i, ids in enumerate(expected)]
  assert [c.text for c in response.choices] == texts  # Prompt-major, best beam first; echo leads with the prompt.


def test_chat_with_beams_equals_lm_generate_on_the_rendered_conversation(client, lm):
  messages = [{"role": "user", "content": "Hello world"}]
  response = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=N,
                                            extra_body={"num_beams": 2})
  text = protocol.render_chat([protocol.ChatMessage(**m) for m in messages])
  (expected,) = lm.generate([text], N, num_beams=2, stop=list(protocol.CHAT_STOPS))
  assert response.choices[0].message.content == expected


def test_constrained_sampling_without_beams_equals_lm_generate(client, lm):
  response = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=N, n=2, temperature=1.5,
                                       seed=7, extra_body={"no_repeat_ngram_size": 1, "top_k": 20})
  expected = lm.generate([PROMPT], N, temperature=1.5, top_k=20, seed=7, num_samples=2, no_repeat_ngram_size=1)
  assert [c.text for c in response.choices] == expected
  prompt = lm.tokenizer.encode(PROMPT)
  for ids, text in zip(lm.generate([prompt], N, temperature=1.5, top_k=20, seed=7, num_samples=2,
                                   no_repeat_ngram_size=1), expected):
    assert lm.tokenizer.decode(ids) == text  # The text's own tokens (re-encoding the text may give others):
    assert len(prompt + ids) == len(set(prompt + ids))  # unigram blocking, no token twice in prompt + continuation.


def test_slot_requests_run_after_a_beam_request(client, lm):
  client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=N, extra_body={"num_beams": 2})
  streamed = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=N, temperature=0, stream=True)
  assert "".join(c.choices[0].text for c in streamed) == lm.generate([PROMPT], N, temperature=0)[0]


ERRORS = [
    (dict(stream=True, extra_body={"num_beams": 2}), "stream"),
    (dict(temperature=0.7, extra_body={"num_beams": 2}), "temperature"),
    (dict(top_p=0.9, extra_body={"num_beams": 2}), "top_p"),
    (dict(extra_body={"num_beams": 2, "top_k": 5}), "top_k"),
    (dict(extra_body={"no_repeat_ngram_size": 2, "repetition_penalty": 1.2}), "repetition_penalty"),
    (dict(presence_penalty=0.5, extra_body={"min_new_tokens": 2}), "presence_penalty"),
    (dict(logprobs=2, extra_body={"num_beams": 2}), "logprobs"),
    (dict(n=3, extra_body={"num_beams": 2}), "n"),
    (dict(n=2, extra_body={"num_beams": 4, "num_return_sequences": 3}), "num_return_sequences"),
    (dict(extra_body={"length_penalty": 2.0}), "length_penalty"),
    (dict(extra_body={"early_stopping": True}), "early_stopping"),
    (dict(extra_body={"num_beams": 2, "min_new_tokens": 9}), "min_new_tokens"),
    (dict(extra_body={"num_beams": 0}), "num_beams"),
    (dict(extra_body={"num_beams": 2, "early_stopping": "sometimes"}), "early_stopping"),
    (dict(prompt=["a", "b", "c", "d", "e"], extra_body={"num_beams": 4}), "num_beams"),  # 20 rows > 16 admitted.
]


@pytest.mark.parametrize("change,param", ERRORS, ids=[f"{p}-{i}" for i, (_, p) in enumerate(ERRORS)])
def test_what_a_beam_request_cannot_honour_is_a_400_naming_the_field(client, change, param):
  body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 8, **change}
  with pytest.raises(openai.BadRequestError) as error:
    client.completions.create(**body)
  assert error.value.body["param"] == param, error.value.body
  assert error.value.body["message"]

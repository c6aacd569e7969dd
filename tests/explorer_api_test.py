"""POST /v1/explore and GET /explorer (gptjax/explore.py, gptjax/serve/explorer.py), through FastAPI's TestClient,
checked against independent computations.

References are built apart from the code under test: probabilities from `lm.logits`, ablations from parameters
with the ablated weights zeroed, the logit lens's first layer from the embeddings in numpy.
"""

import copy
import dataclasses
import re
import string

import fastapi
import numpy as np
import pytest
from fastapi.testclient import TestClient

from gptjax import explore
from gptjax import probe
from gptjax.language_model import LanguageModel
from gptjax.serve import explorer
from gptjax.tokenizer import char_tokenizer, train_bpe

from tests import tiny_lm

TEXT = "Hello world!\nHello"


@pytest.fixture(scope="module")
def lm():
  tokenizer = train_bpe(tiny_lm.CORPUS + ["Hello world!\nHello there, world.\n"] * 8, 320)
  config = dataclasses.replace(tiny_lm.TINY, vocab_size=tokenizer.vocab_size, block_size=16, num_layers=2,
                               num_heads=2)
  return tiny_lm.random_lm(config, tokenizer, scale=8.0)


@pytest.fixture(scope="module")
def client(lm):
  app = fastapi.FastAPI()
  app.include_router(explorer.router)
  app.state.lm = lm
  with TestClient(app) as c:
    yield c


def post(client, **body):
  response = client.post("/v1/explore", json=body)
  assert response.status_code == 200, response.text
  return response.json()


def softmax(logits):
  z = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def test_probabilities_and_ranks_equal_the_models_softmax(lm, client):
  reply = post(client, text=TEXT, top_k=5)
  ids = lm.tokenizer.encode(TEXT)
  logits = lm.logits(ids)[0]
  probs = softmax(logits)
  assert [t["id"] for t in reply["tokens"]] == ids
  assert len(reply["positions"]) == len(ids)
  for t, position in enumerate(reply["positions"]):
    top = [c["id"] for c in position["top"]]
    assert top == list(np.argsort(-logits[t], kind="stable")[:5])
    np.testing.assert_allclose([c["prob"] for c in position["top"]], probs[t, top], atol=1e-5, rtol=0)
  assert reply["next"] == [dict(c, append=c["append"]) for c in reply["next"]]
  assert [c["id"] for c in reply["next"]] == [c["id"] for c in reply["positions"][-1]["top"]]
  # GLTR: token t's rank and probability under position t - 1's prediction.
  assert reply["tokens"][0]["rank"] is None and reply["tokens"][0]["prob"] is None
  for t in range(1, len(ids)):
    token = reply["tokens"][t]
    assert token["rank"] == 1 + int((logits[t - 1] > logits[t - 1, ids[t]]).sum())
    np.testing.assert_allclose(token["prob"], probs[t - 1, ids[t]], atol=1e-5, rtol=0)


def test_tokens_are_shown_readably(lm, client):
  text = "Hello world!\n\tHello 😀"
  reply = post(client, text=text)
  whole = [t for t in reply["tokens"] if not t["partial"]]
  displays = "".join(t["display"] for t in reply["tokens"])
  assert "·world" in displays and "↵" in displays and "⇥" in displays
  assert not re.search("[ĠĊĉ]", displays), displays  # GPT-2's byte markers never reach the page
  assert any(t["partial"] for t in reply["tokens"])  # the emoji spans several byte tokens...
  assert all(re.fullmatch(r"(\\x[0-9a-f]{2}|·)+", t["display"]) for t in reply["tokens"] if t["partial"])
  # ...and the whole tokens' texts are the text's exact pieces (the space before the emoji went with its bytes).
  assert "".join(t["text"] for t in whole) == "Hello world!\n\tHello"
  # A candidate's `append` is what it adds to the decoded text, even when the token alone is a partial character.
  ids = lm.tokenizer.encode(text)
  for c in reply["next"]:
    assert c["append"] == lm.tokenizer.decode(ids + [c["id"]])[len(lm.tokenizer.decode(ids)):]


def test_attention_is_causal_and_matches_the_models_own(lm, client):
  reply = post(client, text=TEXT, attention=True)
  maps = explore.decode_array(reply["attention"])
  T = len(reply["tokens"])
  assert reply["attention"]["dtype"] == "float16" and maps.shape == (2, 2, T, T)
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=2e-3)  # float16 on the wire
  assert not maps[..., np.triu_indices(T, k=1)[0], np.triu_indices(T, k=1)[1]].any()  # nothing sees the future
  np.testing.assert_allclose(maps, probe.attention_maps(lm, TEXT), atol=1e-3)
  part = post(client, text=TEXT, attention=True, layers=[1], heads=[1, 0])
  np.testing.assert_array_equal(explore.decode_array(part["attention"]), maps[[1]][:, [1, 0]])
  assert post(client, text=TEXT)["attention"] is None


def _zeroed(lm, ablation):
  """A copy of `lm` whose parameters make the ablated output exactly zero (bias included, except for one head)."""
  params = copy.deepcopy(jax_to_numpy(lm.params))
  kind, layer = ablation[0], ablation[1]
  if kind == "head":  # c_proj's kernel is [H, K, D]: one head's rows carry only that head's output
    params[f"h_{layer}"]["attn"]["c_proj"]["kernel"][ablation[2]] = 0.0
  else:
    proj = params[f"h_{layer}"][kind if kind == "mlp" else "attn"]["c_proj"]
    proj["kernel"][...] = 0.0
    proj["bias"][...] = 0.0
  return LanguageModel(lm.config, params, lm.tokenizer)


def jax_to_numpy(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: np.array(x), tree)


@pytest.mark.parametrize("ablation", [("head", 1, 0), ("head", 0, 1), ("attn", 0), ("mlp", 1)])
def test_ablation_equals_a_forward_pass_with_that_output_zeroed(lm, client, ablation):
  ids = lm.tokenizer.encode(TEXT)
  reference = _zeroed(lm, ablation).logits(ids)[0]
  ablated = explore.engine_for(lm).forward(np.asarray([ids]), ablations=(ablation,)).logits_BTV[0]
  np.testing.assert_allclose(ablated, reference, atol=1e-5, rtol=0)
  assert np.abs(reference - lm.logits(ids)[0]).max() > 1e-3  # the ablation does change something

  body = dict(zip(("kind", "layer", "head"), ablation))
  reply = post(client, text=TEXT, ablations=[body], top_k=5)["ablation"]
  base, zeroed = softmax(lm.logits(ids)[0, -1]), softmax(reference[-1])
  shown = [t["id"] for t in reply["tokens"]]
  assert set(np.argsort(-zeroed)[:5]) <= set(shown) and set(np.argsort(-base)[:5]) <= set(shown)
  np.testing.assert_allclose([t["ablated_prob"] for t in reply["tokens"]], zeroed[shown], atol=1e-5, rtol=0)
  np.testing.assert_allclose([t["prob"] for t in reply["tokens"]], base[shown], atol=1e-5, rtol=0)
  np.testing.assert_allclose(reply["kl"], (base * np.log(base / zeroed)).sum(), atol=1e-5)
  assert reply["ablations"] == [body]


def test_logit_lens_last_layer_is_the_models_prediction_and_first_is_the_embedding(lm, client):
  ids = lm.tokenizer.encode(TEXT)
  logits = lm.logits(ids)[0]
  for position in (len(ids) - 1, 2):
    lens = post(client, text=TEXT, lens_position=position, top_k=5)["lens"]
    assert lens["position"] == position and len(lens["layers"]) == lm.config.num_layers + 1
    last = lens["layers"][-1]
    assert [c["id"] for c in last["top"]] == list(np.argsort(-logits[position], kind="stable")[:5])
    np.testing.assert_allclose([c["prob"] for c in last["top"]], softmax(logits[position])[[c["id"] for c in last["top"]]],
                               atol=1e-5, rtol=0)
    # Layer "embeddings": ln_f(wte[id] + wpe[position]) through the tied unembedding, in numpy.
    p = jax_to_numpy(lm.params)
    x = p["wte"]["embedding"][ids[position]] + p["wpe"]["embedding"][position]
    x = (x - x.mean()) / np.sqrt(x.var() + lm.config.layer_norm_epsilon) * p["ln_f"]["scale"] + p["ln_f"]["bias"]
    first = p["wte"]["embedding"] @ x
    np.testing.assert_allclose([c["prob"] for c in lens["layers"][0]["top"]], softmax(first)[np.argsort(-first)[:5]],
                               atol=1e-5, rtol=0)
  assert lens["layers"][0]["target"]["id"] == ids[3]
  assert post(client, text=TEXT, lens=True)["lens"]["position"] == len(ids) - 1
  assert post(client, text=TEXT, lens_position=-2)["lens"]["position"] == len(ids) - 2


def test_logit_lens_of_a_post_norm_model_without_final_norm():
  # GPT-1's layout: each block's output is already normalised and nothing precedes the unembedding.
  tokenizer = char_tokenizer(string.ascii_lowercase + " ")
  config = dataclasses.replace(tiny_lm.TINY, vocab_size=tokenizer.vocab_size, norm="post", final_norm=False)
  lm = tiny_lm.random_lm(config, tokenizer, scale=8.0)
  reply = explore.explore(lm, "hello there", lens=True, top_k=3)
  logits = lm.logits(tokenizer.encode("hello there"))[0, -1]
  np.testing.assert_allclose([c["prob"] for c in reply["lens"]["layers"][-1]["top"]],
                             np.sort(softmax(logits))[::-1][:3], atol=1e-5, rtol=0)
  assert [t["display"] for t in reply["tokens"]][5] == "·"


@pytest.mark.parametrize("body, param", [
    ({"text": ""}, "text"),
    ({}, "text"),
    ({"text": "a", "ids": [1]}, "ids"),
    ({"text": "Hello world! " * 8}, "text"),  # longer than the 16-token context
    ({"ids": []}, "ids"),
    ({"ids": [1, 10 ** 6]}, "ids"),
    ({"ids": "abc"}, "ids"),
    ({"text": "Hello", "top_k": 0}, "top_k"),
    ({"text": "Hello", "top_k": 101}, "top_k"),
    ({"text": "Hello", "top_k": "ten"}, "top_k"),
    ({"text": "Hello", "top_k": True}, "top_k"),
    ({"text": "Hello", "attention": True, "layers": [2]}, "layers"),
    ({"text": "Hello", "attention": True, "heads": [-1]}, "heads"),
    ({"text": "Hello", "lens_position": 99}, "lens_position"),
    ({"text": "Hello", "ablations": [{"kind": "head", "layer": 5, "head": 0}]}, "ablations[0].layer"),
    ({"text": "Hello", "ablations": [{"kind": "mlp", "layer": 0}, {"kind": "head", "layer": 0, "head": 9}]},
     "ablations[1].head"),
    ({"text": "Hello", "ablations": [{"kind": "neuron", "layer": 0}]}, "ablations[0].kind"),
    ({"text": "Hello", "temperature": 1.0}, "temperature"),
])
def test_bad_requests_are_400s_naming_the_field(client, body, param):
  response = client.post("/v1/explore", json=body)
  assert response.status_code == 400, response.text
  error = response.json()["error"]
  assert set(error) == {"message", "type", "param", "code"}
  assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_a_body_that_is_not_json_is_a_400(client):
  response = client.post("/v1/explore", content=b"{text: 'a'", headers={"Content-Type": "application/json"})
  assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_the_page_is_served_with_nothing_from_elsewhere(client):
  page = client.get("/explorer")
  assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
  assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
  assert assets and all(a.startswith("/explorer/static/") or a.startswith("data:") for a in assets), assets
  for asset in assets:
    if asset.startswith("/"):
      response = client.get(asset)
      assert response.status_code == 200, asset
      assert not re.search(r"https?://", response.text), f"{asset} refers to another site"
  assert client.get("/explorer/static/explorer.py").status_code == 404
  assert client.get("/explorer/static/..%2Fexplorer.py").status_code == 404


def test_sampling_distribution_follows_the_samplers_order():
  probs = [0.5, 0.3, 0.15, 0.05]
  np.testing.assert_allclose(explore.sampling_distribution(probs), probs)
  np.testing.assert_array_equal(explore.sampling_distribution(probs, temperature=0), [1, 0, 0, 0])
  np.testing.assert_array_equal(explore.sampling_distribution(probs, top_k=1), [1, 0, 0, 0])
  np.testing.assert_allclose(explore.sampling_distribution(probs, top_p=0.6), [0.625, 0.375, 0, 0])
  hot = explore.sampling_distribution(probs, temperature=2.0)
  np.testing.assert_allclose(hot, np.sqrt(probs) / np.sqrt(probs).sum())


def test_the_servers_own_app_serves_the_explorer(lm):
  import time  # pylint: disable=g-import-not-at-top
  from gptjax.serve import app as app_lib  # pylint: disable=g-import-not-at-top
  app = app_lib.create_app(lm, app_lib.ServerOptions(num_slots=1, warm_up=False))
  with TestClient(app) as c:
    while (health := c.get("/health")).status_code != 200:  # the model loads in a background thread
      assert health.json()["error"]["code"] == "loading", health.text
      time.sleep(0.1)
    reply = c.post("/v1/explore", json={"text": TEXT, "top_k": 3, "ablations": [{"kind": "head", "layer": 0,
                                                                                  "head": 0}]})
    assert reply.status_code == 200, reply.text
    probs = softmax(lm.logits(lm.tokenizer.encode(TEXT))[0, -1])
    np.testing.assert_allclose([c["prob"] for c in reply.json()["next"]], np.sort(probs)[::-1][:3], atol=1e-5)
    bad = c.post("/v1/explore", json={"text": TEXT, "top_k": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_k"
    assert c.get("/explorer").status_code == 200

"""gptjax.finetune: the grown embedding, the head on the extract token, task + lambda * LM loss, metrics, and the
saved head behind gptjax.load / classify / choose (gptjax/heads.py)."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gptjax
from gptjax import finetune as F
from gptjax import model as M
from gptjax import tasks as T
from gptjax import tokenizer as tokenizer_lib
from gptjax.language_model import LanguageModel

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?'"


def _tokenizer():
  """A character tokenizer with the three task tokens added (ids 32, 33, 34)."""
  tok = tokenizer_lib.char_tokenizer(ALPHABET)
  ids = T.add_task_tokens(tok)
  return tok, ids


@pytest.fixture
def tiny_model(tiny_model_config, tiny_params):
  """`tiny_model(tokenizer)` -> (config, params): a 1-layer GPT sized to the tokenizer, context 32, built once per
  config (conftest's `tiny_params`: compiling is the slow part of these tests)."""

  def make(tok):
    config = tiny_model_config(vocab_size=tok.vocab_size, num_layers=1, mlp_dim=32)
    return config, tiny_params(config)

  return make


@pytest.fixture
def task_params(tiny_model):
  """`task_params(tokenizer, spec, seed=0)` -> (config, {"transformer": ..., "head": ...}), the head initialised."""

  def make(tok, spec, seed=0):
    config, params = tiny_model(tok)
    return config, {"transformer": params, "head": F.init_head(spec, config, jax.random.key(seed + 7))}

  return make


@functools.partial(jax.jit, static_argnums=0)
def _gpt(config, params, tokens_BL, mask_BL):
  return M.GPT(config).apply({"params": params}, tokens_BL, attention_mask_BL=mask_BL, return_hidden=True)


def _padded_gpt(config, params, tokens_BL, mask_BL):
  """`_gpt` on rows padded to [8, block_size] (one compile for all tests), cut back to the input's shape."""
  B, L = tokens_BL.shape
  tokens = np.zeros((8, config.block_size), np.int32)
  mask = np.zeros((8, config.block_size), bool)
  tokens[:B, :L], mask[:B, :L] = tokens_BL, mask_BL
  logits, hidden = _gpt(config, params, tokens, mask)
  return logits[:B, :L], hidden[:B, :L]


def _last_states(config, params, seqs):
  """The final hidden state of each sequence, run LEFT-padded through the Linen model itself: an independent way
  to find the extract token's state (the fine-tuning path and the engine right-pad and gather by index)."""
  width = max(map(len, seqs))
  tokens = np.array([[0] * (width - len(s)) + list(s) for s in seqs], np.int32)
  mask = np.array([[0] * (width - len(s)) + [1] * len(s) for s in seqs], bool)
  return _padded_gpt(config, params, tokens, mask)[1][:, -1]


_losses = jax.jit(F.losses, static_argnums=(0, 1, 2), static_argnames=("deterministic",))
_forward = jax.jit(F.task_forward, static_argnums=(0, 1))


def _records(rows):
  return [(f"data.jsonl:{i + 1}", row) for i, row in enumerate(rows)]


def _seq(data, i=0, j=0):
  return data.tokens[i, j, :data.lengths[i, j]].tolist()


# ---- The embedding, the head, the loss --------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_grow_embedding_adds_initialised_rows_and_keeps_old_ones(tiny_model_config, tie):
  rng = np.random.default_rng(0)
  config = tiny_model_config(vocab_size=40, num_layers=1, emb_dim=64, mlp_dim=32, tie_embeddings=tie, init_std=0.05)
  params = {"wte": {"embedding": rng.normal(size=(40, 64)).astype(np.float32)},
            "h_0": {"mlp": {"c_fc": {"kernel": rng.normal(size=(64, 32)).astype(np.float32)}}}}
  if not tie:
    params["lm_head"] = {"kernel": rng.normal(size=(64, 40)).astype(np.float32)}
  grown_config, grown = F.grow_embedding(config, params, 43, jax.random.key(1))
  assert grown_config == dataclasses.replace(config, vocab_size=43)
  wte = np.asarray(grown["wte"]["embedding"])
  assert wte.shape == (43, 64)
  np.testing.assert_array_equal(wte[:40], params["wte"]["embedding"])
  assert 0.04 < wte[40:].std() < 0.06 and abs(wte[40:].mean()) < 0.01  # N(0, init_std) rows.
  assert not np.allclose(wte[40], wte[41])
  if not tie:
    kernel = np.asarray(grown["lm_head"]["kernel"])
    assert kernel.shape == (64, 43)
    np.testing.assert_array_equal(kernel[:, :40], params["lm_head"]["kernel"])
    assert 0.04 < kernel[:, 40:].std() < 0.06
  assert grown["h_0"] is params["h_0"]
  # A checkpoint already padded past its tokenizer keeps its rows: nothing to grow.
  same_config, same = F.grow_embedding(grown_config, grown, 42, jax.random.key(2))
  assert same_config == grown_config and same is grown


def test_auxiliary_term_is_exactly_lambda_times_the_text_lm_loss(task_params):
  tok, ids = _tokenizer()
  spec = T.TaskSpec("entailment", ("p", "h"), labels=("no", "yes"))
  rows = [{"p": "the cat sat on the mat", "h": "a cat sat", "label": "yes"},
          {"p": "it is late", "h": "it is early!", "label": "no"}, {"p": "x", "h": "y", "label": "no"}]
  data = T.encode_records(spec, tok, ids, _records(rows), 32)
  config, params = task_params(tok, spec)
  batch = {"tokens": data.tokens, "lengths": data.lengths, "labels": data.labels}
  assert data.num_truncated == 1 and data.lengths[:, 0].tolist() == [32, 25, 5]  # Row 1 loses 2 characters.
  task_ids = tuple(ids.values())
  total_off, aux_off = _losses(config, spec.kind, task_ids, params, batch, lm_coef=0.0)
  total, aux = _losses(config, spec.kind, task_ids, params, batch, lm_coef=0.5)
  # The LM loss recomputed in numpy from the GPT's logits: text targets only, softmax over the vocabulary minus the
  # task tokens.
  logits = np.asarray(_padded_gpt(config, params["transformer"], data.tokens[:, 0], data.tokens[:, 0] > -1)[0],
                      np.float64)
  nll = []
  for i in range(len(rows)):
    n = data.lengths[i, 0]
    for t in range(n - 1):
      target = data.tokens[i, 0, t + 1]
      if target in task_ids:
        continue  # The delimiter and extract tokens are not language.
      row = np.delete(logits[i, t], list(task_ids))
      nll.append(np.log(np.exp(row - row.max()).sum()) + row.max() - logits[i, t, target])
  # Every text token is a target (the first one predicted from <|start|>); the task tokens are not.
  assert len(nll) == sum(len(r["p"]) + len(r["h"]) for r in rows) - 2
  np.testing.assert_allclose(float(aux["lm_loss"]), np.mean(nll), rtol=1e-5)
  np.testing.assert_allclose(float(total_off), float(aux_off["task_loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(total) - float(total_off), 0.5 * float(aux["lm_loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(aux["task_loss"]), float(aux_off["task_loss"]), rtol=1e-6)
  # Rows 2 and 3 are right-padded to row 1's length: their padding is neither input nor target.


def test_head_reads_each_sequence_at_its_own_extract_token_and_similarity_sums_both_orders(task_params):
  tok, ids = _tokenizer()
  spec = T.TaskSpec("similarity", ("a", "b"), labels=("diff", "same"))
  rows = [{"a": "a long first sentence", "b": "hi", "label": "same"}, {"a": "no", "b": "yes", "label": "diff"}]
  data = T.encode_records(spec, tok, ids, _records(rows), 32)
  config, params = task_params(tok, spec)
  outputs, _, _ = _forward(config, spec.kind, params, data.tokens, data.lengths)
  states = _last_states(config, params["transformer"], [_seq(data, i, j) for i in range(2) for j in range(2)])
  head = params["head"]
  for i in range(2):
    expected = (states[2 * i] + states[2 * i + 1]) @ head["kernel"] + head["bias"]  # Both orders summed.
    np.testing.assert_allclose(outputs[i], expected, rtol=1e-5, atol=1e-6)


def test_multiple_choice_scores_each_answer_and_normalises_across_answers(task_params):
  tok, ids = _tokenizer()
  spec = T.TaskSpec("multiple_choice", ("ctx",), choice_fields=("answers",), num_choices=3)
  data = T.encode_records(spec, tok, ids, _records([{"ctx": "the sky is", "answers": ["blue", "red", "wet"],
                                                     "label": 0}]), 32)
  config, params = task_params(tok, spec)
  outputs, _, _ = _forward(config, spec.kind, params, data.tokens, data.lengths)
  assert outputs.shape == (1, 3)
  states = _last_states(config, params["transformer"], [_seq(data, 0, j) for j in range(3)])
  np.testing.assert_allclose(outputs[0], states @ params["head"]["kernel"][:, 0] + params["head"]["bias"][0],
                             rtol=1e-5, atol=1e-6)
  loss = F.task_loss(spec.kind, outputs, jnp.array([2]))
  np.testing.assert_allclose(loss, -jax.nn.log_softmax(outputs[0])[2], rtol=1e-6)


# ---- Metrics -----------------------------------------------------------------------------------------------------


def test_metrics():
  labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
  predictions = np.array([1, 1, 0, 0, 0, 1, 0, 1])  # tp 3, fn 1, fp 1, tn 3.
  m = F.compute_metrics("classes", predictions, labels)
  assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(0.75) and m["mcc"] == pytest.approx(0.5)
  three = F.compute_metrics("classes", np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]))
  assert three["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3) and "mcc" not in three
  r = F.compute_metrics("regression", np.array([1.0, 2.0, 3.0, 5.0]), np.array([2.0, 4.0, 6.0, 7.0]))
  assert r["spearman"] == pytest.approx(1.0) and 0.9 < r["pearson"] < 1.0 and r["mse"] == pytest.approx(4.5)
  assert F.compute_metrics("choice", np.array([0, 2]), np.array([0, 1])) == {"accuracy": 0.5}


# ---- The saved head: gptjax.load, classify, choose ---------------------------------------------------------------


@pytest.fixture
def fine_tuned(task_params, tmp_path):
  """`fine_tuned(spec, name='model')` -> (folder, config, params, tokenizer): an initialised head exported."""

  def make(spec, name="model"):
    tok, _ = _tokenizer()
    config, params = task_params(tok, spec)
    out = F.export_model(tmp_path / name, config, params, tok, spec, extra={"step": 3})
    return out, config, params, tok

  return make


def _head_outputs(config, params, tok, task, segments):
  """What the head gives one example, from `_last_states` of the sequences the GPT-1 layout builds: per answer
  (multiple choice), else of the states summed over the example's sequences (both orders for similarity)."""
  ids = {t: tok.token_to_id(t) for t in T.TASK_TOKENS}
  encoded = [[tok.encode(a) for a in s] if isinstance(s, list) else tok.encode(s) for s in segments]
  seqs, _ = T.format_sequences(task, encoded, ids, config.block_size)
  states = np.asarray(_last_states(config, params["transformer"], seqs))
  kernel, bias = np.asarray(params["head"]["kernel"]), np.asarray(params["head"]["bias"])
  if task == "multiple_choice":
    return states @ kernel[:, 0] + bias[0]
  return states.sum(axis=0) @ kernel + bias


def test_saved_head_is_restored_by_gptjax_load_and_used_by_choose(fine_tuned, tmp_path):
  spec = T.TaskSpec("multiple_choice", ("premise", "question"), choice_fields=("c1", "c2"), num_choices=2)
  out, config, params, tok = fine_tuned(spec)
  assert {p.name for p in out.iterdir()} >= {"config.json", "finetune.json", "head.safetensors", "model.safetensors",
                                            "tokenizer.json"}
  model = gptjax.load(out)
  assert model.head.spec == spec and model.config.vocab_size == tok.vocab_size
  np.testing.assert_array_equal(model.head.params["kernel"], params["head"]["kernel"])
  assert json.loads((out / "finetune.json").read_text())["step"] == 3
  # choose == the softmax across the answers' head scores of the sequences built by the task format.
  answers = ["wet grass", "dry grass", "a cat"]
  scores = _head_outputs(config, params, tok, "multiple_choice", ["it rained. effect", answers])
  probs = model.choose("it rained. effect", answers, probabilities=True)
  np.testing.assert_allclose(probs, jax.nn.softmax(jnp.array(scores)), rtol=1e-5)
  assert model.choose("it rained. effect", answers) == int(np.argmax(scores))
  # A batch: each context with its own answers. The same two answers in both orders must get opposite indices.
  contexts, answer_lists = ["a", "a", "b"], [["x", "y"], ["y", "x"], ["x", "y", "z"]]
  expected = [_head_outputs(config, params, tok, "multiple_choice", [c, a]) for c, a in zip(contexts, answer_lists)]
  assert model.choose(contexts, answer_lists) == [int(np.argmax(e)) for e in expected]
  for got, want in zip(model.choose(contexts, answer_lists, probabilities=True), expected):
    np.testing.assert_allclose(got, jax.nn.softmax(jnp.array(want)), rtol=1e-5)
  with pytest.raises(ValueError, match="fine-tuned for multiple_choice: use LanguageModel.choose, not classify"):
    model.classify("hello")
  # Saving the loaded model again keeps the head.
  again = gptjax.load(model.save(tmp_path / "again"))
  np.testing.assert_array_equal(again.head.params["bias"], params["head"]["bias"])


def test_classify_labels_pairs_and_regression(fine_tuned, tiny_model):
  spec = T.TaskSpec("entailment", ("premise", "hypothesis"), labels=("entailment", "neutral", "contradiction"))
  out, config, params, tok = fine_tuned(spec)
  model = gptjax.load(out)
  probs = model.classify(("a cat sat.", "a cat"), probabilities=True)
  assert list(probs) == list(spec.labels)
  expected = jax.nn.softmax(jnp.array(_head_outputs(config, params, tok, "entailment", ["a cat sat.", "a cat"])))
  np.testing.assert_allclose(list(probs.values()), expected, rtol=1e-5)
  assert model.classify(("a cat sat.", "a cat")) == spec.labels[int(np.argmax(expected))]
  batch = model.classify([("a cat sat.", "a cat"), {"premise": "no", "hypothesis": "yes"}])
  second = _head_outputs(config, params, tok, "entailment", ["no", "yes"])
  assert batch == [spec.labels[int(np.argmax(expected))], spec.labels[int(np.argmax(second))]]
  with pytest.raises(ValueError, match=r"input 0: entailment takes 2 text\(s\)"):
    model.classify(["just one"])
  with pytest.raises(ValueError, match="fine-tuned for entailment: use LanguageModel.classify, not choose"):
    model.choose("a", ["b", "c"])
  # Regression: the head's one output, the states of both orders (a, b) and (b, a) summed.
  regression = T.TaskSpec("similarity", ("a", "b"), regression=True)
  out, config, params, tok = fine_tuned(regression, name="regression")
  score = gptjax.load(out).classify(("one", "two"))
  assert isinstance(score, float)
  (expected,) = _head_outputs(config, params, tok, "similarity", ["one", "two"])
  assert score == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
  plain = LanguageModel(*tiny_model(tokenizer_lib.char_tokenizer(ALPHABET)))
  with pytest.raises(ValueError, match="classify needs a fine-tuned model"):
    plain.classify("hello")

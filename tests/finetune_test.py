"""GPT-1 fine-tuning: the four input layouts, truncation, the auxiliary LM loss, readers, metrics, the saved head,
and a real task learnt end to end through the CLIs."""

import csv
import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import tokenize

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import gptjax
from gptjax import finetune as F
from gptjax import model as M
from gptjax import tokenizer as tokenizer_lib
from gptjax.language_model import LanguageModel

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?'"
REPO = pathlib.Path(__file__).resolve().parents[1]


def _tokenizer():
  """A character tokenizer with the three task tokens added (ids 32, 33, 34)."""
  tok = tokenizer_lib.char_tokenizer(ALPHABET)
  ids = F.add_task_tokens(tok)
  return tok, ids


def _tiny_model(tok, *, seed=0, **overrides):
  config = M.ModelConfig(**{**dict(vocab_size=tok.vocab_size, block_size=32, num_layers=1, num_heads=2, emb_dim=16,
                                   mlp_dim=32, dropout_rate=0.0, attention_dropout_rate=0.0), **overrides})
  return config, nn.meta.unbox(M.init_params(config, jax.random.key(seed)))


def _records(rows):
  return [(f"data.jsonl:{i + 1}", row) for i, row in enumerate(rows)]


def _seq(data, i=0, j=0):
  return data.tokens[i, j, :data.lengths[i, j]].tolist()


# ---- The four layouts of the paper's Figure 1 ------------------------------------------------------------------


def test_classification_layout_is_start_text_extract():
  tok, ids = _tokenizer()
  spec = F.TaskSpec("classification", ("text",), labels=("neg", "pos"))
  data = F.encode_records(spec, tok, ids, _records([{"text": "good film", "label": "pos"},
                                                    {"text": "bad", "label": "neg"}]), max_length=32)
  start, extract = ids[F.START], ids[F.EXTRACT]
  assert _seq(data, 0) == [start] + tok.encode("good film") + [extract]
  assert _seq(data, 1) == [start] + tok.encode("bad") + [extract]
  assert data.tokens.shape == (2, 1, 11)
  assert data.tokens[1, 0, 5:].tolist() == [0] * 6  # Right padding.
  assert data.labels.tolist() == [1, 0]


def test_entailment_layout_is_start_premise_delim_hypothesis_extract():
  tok, ids = _tokenizer()
  spec = F.TaskSpec("entailment", ("premise", "hypothesis"), labels=("yes", "no"))
  data = F.encode_records(spec, tok, ids, _records([{"premise": "a cat sat", "hypothesis": "a cat",
                                                     "label": "yes"}]), 32)
  assert _seq(data) == ([ids[F.START]] + tok.encode("a cat sat") + [ids[F.DELIMITER]] + tok.encode("a cat")
                        + [ids[F.EXTRACT]])


def test_similarity_has_both_orders():
  tok, ids = _tokenizer()
  spec = F.TaskSpec("similarity", ("a", "b"), regression=True)
  data = F.encode_records(spec, tok, ids, _records([{"a": "one", "b": "two!", "label": 3.5}]), 32)
  s, d, e = ids[F.START], ids[F.DELIMITER], ids[F.EXTRACT]
  assert data.tokens.shape[1] == 2
  assert _seq(data, 0, 0) == [s] + tok.encode("one") + [d] + tok.encode("two!") + [e]
  assert _seq(data, 0, 1) == [s] + tok.encode("two!") + [d] + tok.encode("one") + [e]
  assert data.labels.dtype == np.float32 and data.labels.tolist() == [3.5]


def test_multiple_choice_has_one_sequence_per_answer():
  tok, ids = _tokenizer()
  spec = F.resolve_spec(F.TaskSpec("multiple_choice", ("premise", "question"), choice_fields=("c1", "c2", "c3")),
                        _records([{"premise": "it rained.", "question": "effect", "c1": "wet", "c2": "dry",
                                   "c3": "cold", "label": 0}]))
  assert spec.num_choices == 3
  records = _records([{"premise": "it rained.", "question": "effect", "c1": "wet", "c2": "dry", "c3": "cold",
                       "label": 2}])
  data = F.encode_records(spec, tok, ids, records, 32)
  context = tok.encode("it rained. effect")  # Context fields joined with a space.
  for j, answer in enumerate(["wet", "dry", "cold"]):
    assert _seq(data, 0, j) == [ids[F.START]] + context + [ids[F.DELIMITER]] + tok.encode(answer) + [ids[F.EXTRACT]]
  assert data.labels.tolist() == [2]
  # One list-valued field holds the answers just as well.
  listed = F.TaskSpec("multiple_choice", ("ctx",), choice_fields=("answers",), num_choices=3)
  again = F.encode_records(listed, tok, ids, _records([{"ctx": "it rained. effect", "answers": ["wet", "dry", "cold"],
                                                        "label": 2}]), 32)
  np.testing.assert_array_equal(again.tokens, data.tokens)


def test_task_tokens_extend_the_vocabulary_and_field_text_never_produces_them():
  tok = tokenizer_lib.char_tokenizer(ALPHABET + "<|>")
  size = tok.vocab_size
  ids = F.add_task_tokens(tok)
  assert sorted(ids.values()) == [size, size + 1, size + 2] and tok.vocab_size == size + 3
  assert F.add_task_tokens(tok) == ids  # Idempotent: fine-tuning a fine-tuned model adds nothing.
  spec = F.TaskSpec("classification", ("text",), labels=("a", "b"))
  data = F.encode_records(spec, tok, ids, _records([{"text": "x <|extract|> y", "label": "a"}]), 32)
  body = _seq(data)[1:-1]
  assert body == [tok.token_to_id(c) for c in "x <|extract|> y"]
  assert not set(body) & set(ids.values())
  assert tok.encode("<|extract|>") == [ids[F.EXTRACT]]  # Outside fine-tuning the tokenizer still knows the token.


# ---- Truncation ------------------------------------------------------------------------------------------------


def test_truncation_cuts_the_context_never_the_answer():
  ids = {F.START: 100, F.DELIMITER: 101, F.EXTRACT: 102}
  # Classification keeps the beginning of the text.
  (seq,), cut = F.format_sequences("classification", [list(range(10))], ids, max_length=6)
  assert seq == [100, 0, 1, 2, 3, 102] and cut
  # Entailment / multiple choice keep the END of the premise/context and the whole hypothesis/answer.
  (seq,), cut = F.format_sequences("entailment", [list(range(10)), [50, 51]], ids, max_length=8)
  assert seq == [100, 7, 8, 9, 101, 50, 51, 102] and cut
  seqs, cut = F.format_sequences("multiple_choice", [list(range(10)), [[50], [60, 61, 62]]], ids, max_length=8)
  assert seqs == [[100, 6, 7, 8, 9, 101, 50, 102], [100, 8, 9, 101, 60, 61, 62, 102]] and cut
  # Similarity: the longer text is cut first, both keep their beginnings, both orders share the cut texts.
  seqs, cut = F.format_sequences("similarity", [[1, 2, 3, 4, 5, 6], [7, 8]], ids, max_length=8)
  assert seqs == [[100, 1, 2, 3, 101, 7, 8, 102], [100, 7, 8, 101, 1, 2, 3, 102]] and cut
  seqs, _ = F.format_sequences("similarity", [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], ids, max_length=9)
  assert seqs[0] == [100, 1, 2, 3, 101, 6, 7, 8, 102]
  # Fits: untouched.
  (seq,), cut = F.format_sequences("entailment", [[1], [2]], ids, max_length=5)
  assert seq == [100, 1, 101, 2, 102] and not cut


def test_over_long_answers_and_truncate_false_are_errors_naming_the_line():
  tok, ids = _tokenizer()
  spec = F.TaskSpec("multiple_choice", ("ctx",), choice_fields=("a", "b"), num_choices=2)
  records = _records([{"ctx": "short", "a": "x", "b": "y", "label": 0},
                      {"ctx": "short", "a": "x", "b": "a very long answer indeed", "label": 1}])
  with pytest.raises(F.TooLongError, match=r"data.jsonl:2: the hypothesis/answer alone is 25 tokens.*never"):
    F.encode_records(spec, tok, ids, records, max_length=20)
  strict = F.TaskSpec("classification", ("text",), labels=("a", "b"), truncate=False)
  with pytest.raises(F.TooLongError, match=r"data.jsonl:1: 12 tokens exceed max_length=8 and truncate=False"):
    F.encode_records(strict, tok, ids, _records([{"text": "ten chars!", "label": "a"}]), max_length=8)
  loose = dataclasses.replace(strict, truncate=True)
  data = F.encode_records(loose, tok, ids, _records([{"text": "ten chars!", "label": "a"}]), max_length=8)
  assert data.num_truncated == 1 and _seq(data)[1:-1] == tok.encode("ten ch")


# ---- The embedding, the head, the loss --------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_grow_embedding_adds_initialised_rows_and_keeps_old_ones(tie):
  tok = tokenizer_lib.char_tokenizer(ALPHABET)
  config, params = _tiny_model(tok, tie_embeddings=tie, emb_dim=64, num_heads=2, init_std=0.05)
  F.add_task_tokens(tok)
  grown_config, grown = F.grow_embedding(config, params, tok.vocab_size, jax.random.key(1))
  old = config.vocab_size
  assert grown_config.vocab_size == tok.vocab_size == old + 3
  wte = np.asarray(grown["wte"]["embedding"])
  assert wte.shape == (old + 3, 64)
  np.testing.assert_array_equal(wte[:old], params["wte"]["embedding"])
  assert 0.03 < wte[old:].std() < 0.07 and not np.allclose(wte[old], wte[old + 1])  # N(0, init_std) rows.
  if not tie:
    kernel = np.asarray(grown["lm_head"]["kernel"])
    assert kernel.shape == (64, old + 3)
    np.testing.assert_array_equal(kernel[:, :old], params["lm_head"]["kernel"])
  np.testing.assert_array_equal(grown["h_0"]["mlp"]["c_fc"]["kernel"], params["h_0"]["mlp"]["c_fc"]["kernel"])
  logits = M.GPT(grown_config).apply({"params": grown}, jnp.array([[old, old + 2, 1]]))  # New ids embed and predict.
  assert logits.shape == (1, 3, old + 3) and np.isfinite(logits).all()
  # A checkpoint already padded past its tokenizer keeps its rows: nothing to grow.
  same_config, same = F.grow_embedding(grown_config, grown, tok.vocab_size - 1, jax.random.key(2))
  assert same_config == grown_config and same is grown


def _task_params(tok, spec, seed=0, **overrides):
  config, params = _tiny_model(tok, seed=seed, **overrides)
  return config, {"transformer": params, "head": F.init_head(spec, config, jax.random.key(seed + 7))}


def test_auxiliary_term_is_exactly_lambda_times_the_text_lm_loss():
  tok, ids = _tokenizer()
  spec = F.TaskSpec("entailment", ("p", "h"), labels=("no", "yes"))
  rows = [{"p": "the cat sat on the mat", "h": "a cat sat", "label": "yes"},
          {"p": "it is late", "h": "it is early!", "label": "no"}, {"p": "x", "h": "y", "label": "no"}]
  data = F.encode_records(spec, tok, ids, _records(rows), 32)
  config, params = _task_params(tok, spec)
  batch = {"tokens": data.tokens, "lengths": data.lengths, "labels": data.labels}
  assert data.num_truncated == 1  # "the cat sat on the mat" loses its first 2 characters.
  task_ids = tuple(ids.values())
  total_off, aux_off = F.losses(config, spec.kind, task_ids, params, batch, lm_coef=0.0)
  total, aux = F.losses(config, spec.kind, task_ids, params, batch, lm_coef=0.5)
  # An independent LM loss: the GPT's logits, text targets only, softmax over the vocabulary minus task tokens.
  logits = np.asarray(M.GPT(config).apply({"params": params["transformer"]}, data.tokens[:, 0],
                                          attention_mask_BL=data.tokens[:, 0] > -1), np.float64)
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
  # The right-padded rows were run with causal attention: padding after the extract token changes nothing.
  longer = dict(batch, tokens=np.pad(data.tokens, ((0, 0), (0, 0), (0, 9))))
  total_padded, _ = F.losses(config, spec.kind, task_ids, params, longer, lm_coef=0.5)
  np.testing.assert_allclose(float(total_padded), float(total), rtol=1e-6)


def test_head_reads_each_sequence_at_its_own_extract_token_and_similarity_sums_both_orders():
  tok, ids = _tokenizer()
  spec = F.TaskSpec("similarity", ("a", "b"), labels=("diff", "same"))
  rows = [{"a": "a long first sentence", "b": "hi", "label": "same"}, {"a": "no", "b": "yes", "label": "diff"}]
  data = F.encode_records(spec, tok, ids, _records(rows), 32)
  config, params = _task_params(tok, spec)
  outputs, _, _ = F.task_forward(config, spec.kind, params, data.tokens, data.lengths)
  head = params["head"]
  for i in range(2):
    states = []
    for j in range(2):  # Each order alone, unpadded: its last state is the extract token's.
      seq = jnp.asarray([_seq(data, i, j)])
      _, hidden = M.GPT(config).apply({"params": params["transformer"]}, seq, return_hidden=True)
      states.append(hidden[0, -1])
    expected = (states[0] + states[1]) @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(outputs[i], expected, rtol=1e-5, atol=1e-6)


def test_multiple_choice_scores_each_answer_and_normalises_across_answers():
  tok, ids = _tokenizer()
  spec = F.TaskSpec("multiple_choice", ("ctx",), choice_fields=("answers",), num_choices=3)
  data = F.encode_records(spec, tok, ids, _records([{"ctx": "the sky is", "answers": ["blue", "red", "wet"],
                                                     "label": 0}]), 32)
  config, params = _task_params(tok, spec)
  outputs, _, _ = F.task_forward(config, spec.kind, params, data.tokens, data.lengths)
  assert outputs.shape == (1, 3)
  for j in range(3):
    _, hidden = M.GPT(config).apply({"params": params["transformer"]}, jnp.asarray([_seq(data, 0, j)]),
                                    return_hidden=True)
    np.testing.assert_allclose(outputs[0, j], hidden[0, -1] @ params["head"]["kernel"][:, 0] + params["head"]["bias"][0],
                               rtol=1e-5, atol=1e-6)
  loss = F.task_loss(spec.kind, outputs, jnp.array([2]))
  np.testing.assert_allclose(loss, -jax.nn.log_softmax(outputs[0])[2], rtol=1e-6)


# ---- Bad input ---------------------------------------------------------------------------------------------------


def test_bad_input_names_the_line_the_value_and_what_was_expected(tmp_path):
  tok, ids = _tokenizer()
  spec = F.TaskSpec("classification", ("text",), labels=("neg", "pos"))
  with pytest.raises(ValueError, match=r"data.jsonl:2: label 'meh' in field 'label' is not in the label set "
                                       r"\['neg', 'pos'\]"):
    F.encode_records(spec, tok, ids, _records([{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}]), 32)
  with pytest.raises(ValueError, match=r"data.jsonl:1: missing field 'text'; the record has fields "
                                       r"\['label', 'sentence'\]"):
    F.encode_records(spec, tok, ids, _records([{"sentence": "a", "label": "pos"}]), 32)
  with pytest.raises(ValueError, match=r"Unknown task type 'sentiment'; expected one of \('classification'"):
    F.TaskSpec("sentiment", ("text",))
  with pytest.raises(ValueError, match=r"entailment reads 2 text field\(s\), got text_fields=\('text',\)"):
    F.TaskSpec("entailment", ("text",))
  choice = F.TaskSpec("multiple_choice", ("ctx",), choice_fields=("a", "b"), num_choices=2)
  with pytest.raises(ValueError, match=r"data.jsonl:1: label 2 in field 'label' is not an answer index in \[0, 2\)"):
    F.encode_records(choice, tok, ids, _records([{"ctx": "c", "a": "x", "b": "y", "label": 2}]), 32)
  regression = F.TaskSpec("similarity", ("a", "b"), regression=True)
  with pytest.raises(ValueError, match=r"data.jsonl:1: label 'high' .* is not a number"):
    F.encode_records(regression, tok, ids, _records([{"a": "x", "b": "y", "label": "high"}]), 32)
  with pytest.raises(ValueError, match=r"data.jsonl:1: field 'text' must be text, got int 7"):
    F.encode_records(spec, tok, ids, _records([{"text": 7, "label": "pos"}]), 32)
  bad_json = tmp_path / "bad.jsonl"
  bad_json.write_text('{"text": "ok", "label": "pos"}\n\n{"text": "oops", \n')
  with pytest.raises(ValueError, match=r"bad.jsonl:3: not valid JSON"):
    F.read_records(str(bad_json))
  with pytest.raises(ValueError, match=r"Unknown data file type '.parquet'"):
    (tmp_path / "x.parquet").write_text("")
    F.read_records(str(tmp_path / "x.parquet"))
  with pytest.raises(ValueError, match=r"training data has 1 distinct label\(s\) \('pos',\)"):
    F.resolve_spec(F.TaskSpec("classification", ("text",)), _records([{"text": "a", "label": "pos"}]))


def test_jsonl_csv_and_tsv_give_the_same_records_with_line_numbers(tmp_path):
  rows = [{"text": "good, really", "label": "1"}, {"text": "bad\tday", "label": "0"}, {"text": "ok", "label": "1"}]
  (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  for suffix, delimiter in ((".csv", ","), (".tsv", "\t")):
    with open(tmp_path / f"d{suffix}", "w", newline="") as f:
      writer = csv.DictWriter(f, ["text", "label"], delimiter=delimiter)
      writer.writeheader()
      writer.writerows(rows)
  for name in ("d.jsonl", "d.csv", "d.tsv"):
    records = F.read_records(str(tmp_path / name))
    assert [r for _, r in records] == rows
    assert records[2][0] == f"{tmp_path / name}:{3 if name.endswith('jsonl') else 4}"  # The header is line 1.
  spec = F.resolve_spec(F.TaskSpec("classification", ("text",)), F.read_records(str(tmp_path / "d.csv")))
  assert spec.labels == ("0", "1")  # Inferred, numerically sorted.


def test_tfds_glue_sst2_through_mock_data(tmp_path):
  tok = tokenizer_lib.char_tokenizer([chr(i) for i in range(32, 127)])
  ids = F.add_task_tokens(tok)
  with tfds.testing.mock_data(num_examples=6):
    records = F.read_records("tfds:glue/sst2:validation", tfds_data_dir=str(tmp_path))
    assert len(records) == 6 and records[0][0] == "tfds:glue/sst2 validation example 0"
  assert all(r["label"] in ("negative", "positive") for _, r in records)  # ClassLabel indices read as names.
  spec = F.TaskSpec("classification", ("sentence",), labels=("negative", "positive"))
  data = F.encode_records(spec, tok, ids, records, 64)
  assert data.labels.tolist() == [("negative", "positive").index(r["label"]) for _, r in records]
  assert _seq(data, 3)[1:-1] == tok.encode(records[3][1]["sentence"])


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

"""gptjax.tasks: the four input layouts of GPT-1's Figure 1, truncation, readers (JSONL/CSV/TSV/TFDS), bad input."""

import csv
import dataclasses
import importlib
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gptjax import tasks as T
from gptjax import tokenizer as tokenizer_lib

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?'"


def _tokenizer():
  """A character tokenizer with the three task tokens added (ids 32, 33, 34)."""
  tok = tokenizer_lib.char_tokenizer(ALPHABET)
  ids = T.add_task_tokens(tok)
  return tok, ids


def _records(rows):
  return [(f"data.jsonl:{i + 1}", row) for i, row in enumerate(rows)]


def _seq(data, i=0, j=0):
  return data.tokens[i, j, :data.lengths[i, j]].tolist()


# ---- The four layouts of the paper's Figure 1 ------------------------------------------------------------------


def test_classification_layout_is_start_text_extract():
  tok, ids = _tokenizer()
  spec = T.TaskSpec("classification", ("text",), labels=("neg", "pos"))
  data = T.encode_records(spec, tok, ids, _records([{"text": "good film", "label": "pos"},
                                                    {"text": "bad", "label": "neg"}]), max_length=32)
  start, extract = ids[T.START], ids[T.EXTRACT]
  assert _seq(data, 0) == [start] + tok.encode("good film") + [extract]
  assert _seq(data, 1) == [start] + tok.encode("bad") + [extract]
  assert data.tokens.shape == (2, 1, 11)
  assert data.tokens[1, 0, 5:].tolist() == [0] * 6  # Right padding.
  assert data.labels.tolist() == [1, 0]


def test_entailment_layout_is_start_premise_delim_hypothesis_extract():
  tok, ids = _tokenizer()
  spec = T.TaskSpec("entailment", ("premise", "hypothesis"), labels=("yes", "no"))
  data = T.encode_records(spec, tok, ids, _records([{"premise": "a cat sat", "hypothesis": "a cat",
                                                     "label": "yes"}]), 32)
  assert _seq(data) == ([ids[T.START]] + tok.encode("a cat sat") + [ids[T.DELIMITER]] + tok.encode("a cat")
                        + [ids[T.EXTRACT]])


def test_similarity_has_both_orders():
  tok, ids = _tokenizer()
  spec = T.TaskSpec("similarity", ("a", "b"), regression=True)
  data = T.encode_records(spec, tok, ids, _records([{"a": "one", "b": "two!", "label": 3.5}]), 32)
  s, d, e = ids[T.START], ids[T.DELIMITER], ids[T.EXTRACT]
  assert data.tokens.shape[1] == 2
  assert _seq(data, 0, 0) == [s] + tok.encode("one") + [d] + tok.encode("two!") + [e]
  assert _seq(data, 0, 1) == [s] + tok.encode("two!") + [d] + tok.encode("one") + [e]
  assert data.labels.dtype == np.float32 and data.labels.tolist() == [3.5]


def test_multiple_choice_has_one_sequence_per_answer():
  tok, ids = _tokenizer()
  spec = T.resolve_spec(T.TaskSpec("multiple_choice", ("premise", "question"), choice_fields=("c1", "c2", "c3")),
                        _records([{"premise": "it rained.", "question": "effect", "c1": "wet", "c2": "dry",
                                   "c3": "cold", "label": 0}]))
  assert spec.num_choices == 3
  records = _records([{"premise": "it rained.", "question": "effect", "c1": "wet", "c2": "dry", "c3": "cold",
                       "label": 2}])
  data = T.encode_records(spec, tok, ids, records, 32)
  context = tok.encode("it rained. effect")  # Context fields joined with a space.
  for j, answer in enumerate(["wet", "dry", "cold"]):
    assert _seq(data, 0, j) == [ids[T.START]] + context + [ids[T.DELIMITER]] + tok.encode(answer) + [ids[T.EXTRACT]]
  assert data.labels.tolist() == [2]
  # One list-valued field holds the answers just as well.
  listed = T.TaskSpec("multiple_choice", ("ctx",), choice_fields=("answers",), num_choices=3)
  again = T.encode_records(listed, tok, ids, _records([{"ctx": "it rained. effect", "answers": ["wet", "dry", "cold"],
                                                        "label": 2}]), 32)
  np.testing.assert_array_equal(again.tokens, data.tokens)


def test_task_tokens_extend_the_vocabulary_and_field_text_never_produces_them():
  tok = tokenizer_lib.char_tokenizer(ALPHABET + "<|>")
  size = tok.vocab_size
  ids = T.add_task_tokens(tok)
  assert sorted(ids.values()) == [size, size + 1, size + 2] and tok.vocab_size == size + 3
  assert T.add_task_tokens(tok) == ids  # Idempotent: fine-tuning a fine-tuned model adds nothing.
  spec = T.TaskSpec("classification", ("text",), labels=("a", "b"))
  data = T.encode_records(spec, tok, ids, _records([{"text": "x <|extract|> y", "label": "a"}]), 32)
  body = _seq(data)[1:-1]
  assert body == [tok.token_to_id(c) for c in "x <|extract|> y"]
  assert not set(body) & set(ids.values())
  assert tok.encode("<|extract|>") == [ids[T.EXTRACT]]  # Outside fine-tuning the tokenizer still knows the token.


# ---- Truncation ------------------------------------------------------------------------------------------------


def test_truncation_cuts_the_context_never_the_answer():
  ids = {T.START: 100, T.DELIMITER: 101, T.EXTRACT: 102}
  # Classification keeps the beginning of the text.
  (seq,), cut = T.format_sequences("classification", [list(range(10))], ids, max_length=6)
  assert seq == [100, 0, 1, 2, 3, 102] and cut
  # Entailment / multiple choice keep the END of the premise/context and the whole hypothesis/answer.
  (seq,), cut = T.format_sequences("entailment", [list(range(10)), [50, 51]], ids, max_length=8)
  assert seq == [100, 7, 8, 9, 101, 50, 51, 102] and cut
  seqs, cut = T.format_sequences("multiple_choice", [list(range(10)), [[50], [60, 61, 62]]], ids, max_length=8)
  assert seqs == [[100, 6, 7, 8, 9, 101, 50, 102], [100, 8, 9, 101, 60, 61, 62, 102]] and cut
  # Similarity: the longer text is cut first, both keep their beginnings, both orders share the cut texts.
  seqs, cut = T.format_sequences("similarity", [[1, 2, 3, 4, 5, 6], [7, 8]], ids, max_length=8)
  assert seqs == [[100, 1, 2, 3, 101, 7, 8, 102], [100, 7, 8, 101, 1, 2, 3, 102]] and cut
  seqs, _ = T.format_sequences("similarity", [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], ids, max_length=9)
  assert seqs[0] == [100, 1, 2, 3, 101, 6, 7, 8, 102]
  # Fits: untouched.
  (seq,), cut = T.format_sequences("entailment", [[1], [2]], ids, max_length=5)
  assert seq == [100, 1, 101, 2, 102] and not cut


def test_over_long_answers_and_truncate_false_are_errors_naming_the_line():
  tok, ids = _tokenizer()
  spec = T.TaskSpec("multiple_choice", ("ctx",), choice_fields=("a", "b"), num_choices=2)
  records = _records([{"ctx": "short", "a": "x", "b": "y", "label": 0},
                      {"ctx": "short", "a": "x", "b": "a very long answer indeed", "label": 1}])
  with pytest.raises(T.TooLongError, match=r"data.jsonl:2: the hypothesis/answer alone is 25 tokens.*never"):
    T.encode_records(spec, tok, ids, records, max_length=20)
  strict = T.TaskSpec("classification", ("text",), labels=("a", "b"), truncate=False)
  with pytest.raises(T.TooLongError, match=r"data.jsonl:1: 12 tokens exceed max_length=8 and truncate=False"):
    T.encode_records(strict, tok, ids, _records([{"text": "ten chars!", "label": "a"}]), max_length=8)
  loose = dataclasses.replace(strict, truncate=True)
  data = T.encode_records(loose, tok, ids, _records([{"text": "ten chars!", "label": "a"}]), max_length=8)
  assert data.num_truncated == 1 and _seq(data)[1:-1] == tok.encode("ten ch")



# ---- Bad input ---------------------------------------------------------------------------------------------------


def test_bad_input_names_the_line_the_value_and_what_was_expected(tmp_path):
  tok, ids = _tokenizer()
  spec = T.TaskSpec("classification", ("text",), labels=("neg", "pos"))
  with pytest.raises(ValueError, match=r"data.jsonl:2: label 'meh' in field 'label' is not in the label set "
                                       r"\['neg', 'pos'\]"):
    T.encode_records(spec, tok, ids, _records([{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}]), 32)
  with pytest.raises(ValueError, match=r"data.jsonl:1: missing field 'text'; the record has fields "
                                       r"\['label', 'sentence'\]"):
    T.encode_records(spec, tok, ids, _records([{"sentence": "a", "label": "pos"}]), 32)
  with pytest.raises(ValueError, match=r"Unknown task type 'sentiment'; expected one of \('classification'"):
    T.TaskSpec("sentiment", ("text",))
  with pytest.raises(ValueError, match=r"entailment reads 2 text field\(s\), got text_fields=\('text',\)"):
    T.TaskSpec("entailment", ("text",))
  with pytest.raises(ValueError, match=r"labels must be at least 2 distinct labels, got \('a', 'a'\)"):
    T.TaskSpec("classification", ("text",), labels=("a", "a"))
  choice = T.TaskSpec("multiple_choice", ("ctx",), choice_fields=("a", "b"), num_choices=2)
  with pytest.raises(ValueError, match=r"data.jsonl:1: label 2 in field 'label' is not an answer index in \[0, 2\)"):
    T.encode_records(choice, tok, ids, _records([{"ctx": "c", "a": "x", "b": "y", "label": 2}]), 32)
  regression = T.TaskSpec("similarity", ("a", "b"), regression=True)
  with pytest.raises(ValueError, match=r"data.jsonl:1: label 'high' .* is not a number"):
    T.encode_records(regression, tok, ids, _records([{"a": "x", "b": "y", "label": "high"}]), 32)
  with pytest.raises(ValueError, match=r"data.jsonl:1: field 'text' must be text, got int 7"):
    T.encode_records(spec, tok, ids, _records([{"text": 7, "label": "pos"}]), 32)
  bad_json = tmp_path / "bad.jsonl"
  bad_json.write_text('{"text": "ok", "label": "pos"}\n\n{"text": "oops", \n')
  with pytest.raises(ValueError, match=r"bad.jsonl:3: not valid JSON"):
    T.read_records(str(bad_json))
  with pytest.raises(ValueError, match=r"Unknown data file type '.parquet'"):
    (tmp_path / "x.parquet").write_text("")
    T.read_records(str(tmp_path / "x.parquet"))
  with pytest.raises(ValueError, match=r"training data has 1 distinct label\(s\) \('pos',\)"):
    T.resolve_spec(T.TaskSpec("classification", ("text",)), _records([{"text": "a", "label": "pos"}]))


def test_jsonl_csv_and_tsv_give_the_same_records_with_line_numbers(tmp_path):
  rows = [{"text": "good, really", "label": "1"}, {"text": "bad\tday", "label": "0"}, {"text": "ok", "label": "1"}]
  (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  for suffix, delimiter in ((".csv", ","), (".tsv", "\t")):
    with open(tmp_path / f"d{suffix}", "w", newline="") as f:
      writer = csv.DictWriter(f, ["text", "label"], delimiter=delimiter)
      writer.writeheader()
      writer.writerows(rows)
  for name in ("d.jsonl", "d.csv", "d.tsv"):
    records = T.read_records(str(tmp_path / name))
    assert [r for _, r in records] == rows
    assert records[2][0] == f"{tmp_path / name}:{3 if name.endswith('jsonl') else 4}"  # The header is line 1.
  spec = T.resolve_spec(T.TaskSpec("classification", ("text",)), T.read_records(str(tmp_path / "d.csv")))
  assert spec.labels == ("0", "1")  # Inferred, numerically sorted.


def test_tfds_glue_sst2_through_mock_data(tmp_path):
  tok = tokenizer_lib.char_tokenizer([chr(i) for i in range(32, 127)])
  ids = T.add_task_tokens(tok)
  with tfds.testing.mock_data(num_examples=6):
    records = T.read_records("tfds:glue/sst2:validation", tfds_data_dir=str(tmp_path))
    assert len(records) == 6 and records[0][0] == "tfds:glue/sst2 validation example 0"
  assert all(r["label"] in ("negative", "positive") for _, r in records)  # ClassLabel indices read as names.
  spec = T.TaskSpec("classification", ("sentence",), labels=("negative", "positive"))
  data = T.encode_records(spec, tok, ids, records, 64)
  assert data.labels.tolist() == [("negative", "positive").index(r["label"]) for _, r in records]
  assert _seq(data, 3)[1:-1] == tok.encode(records[3][1]["sentence"])


class GptjaxTinyPairs(tfds.core.GeneratorBasedBuilder):
  """A real TFDS dataset prepared as array_record: sentence pairs, a named ClassLabel, an unlabelled test split."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    features = {"premise": tfds.features.Text(), "hypothesis": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=["entailment", "not_entailment"])}
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, 6, labelled=True),
            "test": self._generate_examples(6, 8, labelled=False)}

  def _generate_examples(self, start, stop, labelled):  # pylint: disable=arguments-differ
    for i in range(start, stop):
      yield i, {"premise": f"premise {i}", "hypothesis": f"hypothesis {i}", "label": i % 2 if labelled else -1}


def test_tfds_prepared_dataset_class_names_and_unlabelled_test_split(tmp_path):
  GptjaxTinyPairs(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  train = T.read_records("tfds:gptjax_tiny_pairs", tfds_data_dir=str(tmp_path), download=False)  # Default: train.
  assert len(train) == 6  # TFDS shuffles the stored order: check each record against its own number.
  assert all(r["label"] == ("entailment", "not_entailment")[int(r["premise"].split()[1]) % 2] for _, r in train)
  test = T.read_records("tfds:gptjax_tiny_pairs:test", tfds_data_dir=str(tmp_path), download=False)
  assert len(test) == 2 and all("label" not in r for _, r in test)  # -1 = no label: predictions only.
  with pytest.raises(ValueError, match=r"has no split 'validation'; it has \['test', 'train'\]"):
    T.read_records("tfds:gptjax_tiny_pairs", default_split="validation", tfds_data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"TFDS has no dataset 'no_such_dataset_xyz'"):
    T.read_records("tfds:no_such_dataset_xyz", tfds_data_dir=str(tmp_path))


@pytest.mark.parametrize("name, task, kind", [
    ("finetune_sst2", "classification", "classes"), ("finetune_rte", "entailment", "classes"),
    ("finetune_stsb", "similarity", "regression"), ("finetune_copa", "multiple_choice", "choice")])
def test_shipped_configs_describe_valid_tasks(name, task, kind):
  config = importlib.import_module(f"configs.{name}").get_config()
  spec = T.TaskSpec.from_config(config.finetune)
  assert (spec.task, spec.kind) == (task, kind)
  assert config.finetune.train_data.startswith("tfds:") and config.finetune.lm_coef == 0.5  # GPT-1's lambda.
  # One schema: the loop's sections hold the same fields as pre-training's, and every value is in range.
  from configs import default  # pylint: disable=g-import-not-at-top
  from gptjax.train import schema  # pylint: disable=g-import-not-at-top
  base = default.get_config()
  for section in ("model", "opt", "train", "eval", "checkpoint", "mesh"):
    assert set(config[section].keys()) == set(base[section].keys()), section
  schema.check(config)

"""gptjax/eval_data.py: what each `--data` source of `python -m gptjax.evaluate` reads, and the errors that name the
file, line or example at fault. No model: evaluate_test.py scores what these return."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gptjax import data as data_lib
from gptjax import eval_data
from gptjax import tfds_source


def _jsonl(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


def test_text_files_are_read_whole_in_sorted_path_order_and_recursively(tmp_path):
  (tmp_path / "b.txt").write_text("second", encoding="utf-8")
  (tmp_path / "a.txt").write_text("first\n\nstill first", encoding="utf-8")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "c.txt").write_text("日本", encoding="utf-8")
  records = eval_data.read_text_files(f"{tmp_path}/**/*.txt")
  assert records.items == ["first\n\nstill first", "second", "日本"]
  assert records.where == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), str(tmp_path / "sub" / "c.txt")]
  assert eval_data.read_text_files(f"{tmp_path}/*.txt").items == ["first\n\nstill first", "second"]
  with pytest.raises(FileNotFoundError, match=r"No files match '.*nothing\*'"):
    eval_data.read_text_files(f"{tmp_path}/nothing*")
  (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("cp1252"))
  with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 \(byte 3: b'\\xe9'\); convert it, e.g. `iconv"):
    eval_data.read_text_files(f"{tmp_path}/latin1.txt")


def test_jsonl_skips_blank_lines_and_names_each_line(tmp_path):
  path = _jsonl(tmp_path / "d.jsonl", ['{"text": "a"}', "", "  ", '{"text": "b"}'])
  records = eval_data.read_jsonl(path)
  assert records.items == [{"text": "a"}, {"text": "b"}]
  assert records.where == [f"{path} line 1", f"{path} line 4"]  # Blank lines still count.
  _jsonl(path, ['{"text": "a"}', '{"text": '])
  with pytest.raises(ValueError, match=r"d.jsonl line 2: not valid JSON \(Expecting value at column 10\)"):
    eval_data.read_jsonl(path)
  with pytest.raises(FileNotFoundError, match="No such JSONL file"):
    eval_data.read_jsonl(tmp_path / "none.jsonl")


@pytest.mark.parametrize("spec, expected", [
    ("lambada", ("lambada", None)),
    ("lambada:text", ("lambada", "text")),
    ("wikitext/wikitext-103-raw-v1:1.0.0", ("wikitext/wikitext-103-raw-v1:1.0.0", None)),
    ("wikitext/wikitext-103-raw-v1:1.0.0:text", ("wikitext/wikitext-103-raw-v1:1.0.0", "text")),
])
def test_a_trailing_version_is_not_a_field(spec, expected):
  assert tfds_source.parse_spec(spec) == expected


def test_each_task_reads_what_it_needs_from_text_and_jsonl(tmp_path):
  (tmp_path / "t.txt").write_text("The first passage.\n\n  \nThe second one\n", encoding="utf-8")
  perplexity = eval_data.load_task_data("perplexity", f"text:{tmp_path}/t.txt")
  assert perplexity.items == ["The first passage.\n\n  \nThe second one\n"]  # One piece of text per file.
  lambada = eval_data.load_task_data("lambada", f"text:{tmp_path}/t.txt")
  assert lambada.items == ["The first passage.", "The second one"]  # One passage per non-blank line.
  assert lambada.where == [f"{tmp_path}/t.txt line 1", f"{tmp_path}/t.txt line 4"]
  path = _jsonl(tmp_path / "p.jsonl", [json.dumps({"text": "one", "title": "x"}), json.dumps({"text": "two"})])
  assert eval_data.load_task_data("perplexity", str(path)).items == ["one", "two"]  # .jsonl needs no prefix.
  assert eval_data.load_task_data("lambada", f"jsonl:{path}").items == ["one", "two"]
  with pytest.raises(ValueError, match=r"p.jsonl line 2: missing field 'title' \(has \['text'\]\)"):
    eval_data.load_task_data("perplexity", str(path), field="title")
  _jsonl(path, [json.dumps({"text": 3})])
  with pytest.raises(ValueError, match="p.jsonl line 1: field 'text' must be a string, got int"):
    eval_data.load_task_data("perplexity", str(path))
  with pytest.raises(ValueError, match="multiple_choice reads JSONL .* or TFDS, not text files"):
    eval_data.load_task_data("multiple_choice", f"text:{tmp_path}/t.txt")


@pytest.mark.parametrize("example, message", [
    ("a string", "expected an object with context, endings and label, got str"),
    ({"context": "c", "endings": ["a"]}, r"missing field 'label' \(has \['context', 'endings'\]\)"),
    ({"context": 1, "endings": ["a"], "label": 0}, "'context' must be a string, got int"),
    ({"context": "c", "endings": [], "label": 0}, "'endings' must be a non-empty list of strings, got \\[\\]"),
    ({"context": "c", "endings": ["a", 2], "label": 0}, "'endings' must be a non-empty list of strings"),
    ({"context": "c", "endings": ["a", "b"], "label": True}, "'label' must be an integer index .* got True"),
    ({"context": "c", "endings": ["a", "b"], "label": "0"}, "'label' must be an integer index .* got '0'"),
    ({"context": "c", "endings": ["a", "b"], "label": 2}, r"label 2 is out of range for 2 endings \(expected 0..1\)"),
    ({"context": "c", "endings": ["a", "b"], "label": -1}, "label -1 is out of range"),
])
def test_a_bad_choice_example_is_named(example, message):
  with pytest.raises(ValueError, match="^ex 7: " + message):
    eval_data.check_choice_example(example, "ex 7")


def test_a_good_choice_example_passes_with_a_numpy_label():
  eval_data.check_choice_example({"context": "c", "endings": ["a", "b"], "label": np.int64(1)}, "ex 0")


def test_the_trainers_splits_are_read_through_load_corpus(tmp_path):
  for i in range(4):
    (tmp_path / f"part_{i}.txt").write_text(f"document {i} " * 50, encoding="utf-8")
  source = f"text:{tmp_path}/*.txt"
  corpus = data_lib.load_corpus(source, val_fraction=0.25, download=False)
  for split, expected in (("val", list(corpus.val)), ("train", list(corpus.train))):
    records = eval_data.load_task_data("perplexity", source, split=split, val_fraction=0.25)
    assert records.items == expected and expected
    assert records.where[0] == f"{source}[{split}] document 0"
  with pytest.raises(ValueError, match=r"lambada cannot read .* with split 'val': the trainer's train/val documents"):
    eval_data.load_task_data("lambada", source, split="val")


@pytest.mark.parametrize("task, source, split, error, message", [
    ("hellaswag", "x.jsonl", None, ValueError, r"Unknown task 'hellaswag'; expected one of \('perplexity',"),
    ("perplexity", "csv:x", None, ValueError, r"Unknown data source 'csv:x': expected 'text:<glob>', 'jsonl:<path>'"),
    ("perplexity", "text:x", "test", ValueError, "split 'test' names a TFDS split, but 'text:x' is not a TFDS source"),
    ("lambada", "p.jsonl", "val", ValueError, "JSONL 'p.jsonl' has no splits; got split 'val'"),
    ("perplexity", "tfds:no_such_dataset_here", None, ValueError, "TFDS has no dataset 'no_such_dataset_here'"),
])
def test_bad_sources_and_splits_are_named(task, source, split, error, message):
  with pytest.raises(error, match=message):
    eval_data.load_task_data(task, source, split=split)


def test_an_empty_source_has_nothing_to_evaluate(tmp_path):
  with pytest.raises(ValueError, match="Nothing to evaluate: '.*empty.jsonl' has no examples"):
    eval_data.load_task_data("lambada", str(_jsonl(tmp_path / "empty.jsonl", ["", " "])))


class GptjaxEvalTexts(tfds.core.GeneratorBasedBuilder):
  """A real TFDS dataset with two text features and a number, prepared on disk."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "title": tfds.features.Text(), "body": tfds.features.Text(), "year": np.int32}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    for i in range(3):
      yield i, {"title": f"title {i}", "body": f"body {i} \u65e5\u672c", "year": 2000 + i}


def test_tfds_text_fields_are_named_or_found(tmp_path):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="'gptjax_eval_texts' is not prepared in .*: run `tfds build"):
    eval_data.load_task_data("perplexity", "tfds:gptjax_eval_texts", tfds_data_dir=data_dir)
  GptjaxEvalTexts(data_dir=data_dir, file_format="array_record").download_and_prepare()
  with pytest.raises(ValueError, match=r"has 2 string fields \['title', 'body'\]|has 2 string fields \['body', "
                     r"'title'\]"):
    eval_data.load_task_data("perplexity", "tfds:gptjax_eval_texts", tfds_data_dir=data_dir)
  bodies = eval_data.load_task_data("perplexity", "tfds:gptjax_eval_texts:body", tfds_data_dir=data_dir)
  assert sorted(bodies.items) == [f"body {i} \u65e5\u672c" for i in range(3)]  # bytes decoded to str.
  assert bodies.where[0] == "tfds:gptjax_eval_texts[test] example 0"
  titles = eval_data.load_task_data("lambada", "tfds:gptjax_eval_texts", tfds_data_dir=data_dir, field="title")
  assert sorted(titles.items) == ["title 0", "title 1", "title 2"]
  with pytest.raises(ValueError, match=r"has no split 'validation'; it has \['test'\]"):
    eval_data.load_task_data("perplexity", "tfds:gptjax_eval_texts:body", split="validation",
                             tfds_data_dir=data_dir)

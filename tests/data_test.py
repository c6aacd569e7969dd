"""Tests for gptjax.data on real files: local text, the builtin corpus, mocked and really prepared TFDS datasets.
(Also covers gptjax/corpus.py, the sources' Documents and Corpus, and gptjax/tfds_source.py, the `tfds:` source.)
"""

import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gptjax import data
from gptjax import tokenizer as tokenizer_lib

SEQ_LEN = 16


def _write_corpus(directory: pathlib.Path, num_files: int = 3) -> str:
  """A few small English-ish files; returns the glob matching them."""
  directory.mkdir(parents=True, exist_ok=True)
  words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jam".split()
  rng = np.random.default_rng(0)
  for i in range(num_files):
    text = " ".join(rng.choice(words, size=600)) + "\n"
    (directory / f"doc_{i}.txt").write_text(text, encoding="utf-8")
  return str(directory / "*.txt")


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("char")
  pattern = _write_corpus(root / "corpus")
  return data.prepare(f"text:{pattern}", "char", cache_dir=root / "cache", tokenizer_dir=root / "tok",
                      val_fraction=0.2, progress=False)


def test_text_batches_have_shape_dtype_and_range(char_data):
  tokenizer, train, val = char_data
  assert val.num_tokens == int((train.num_tokens + val.num_tokens) * 0.2)  # Characters = char tokens.
  batch = train.batch(step=0, batch_size=4, seq_len=SEQ_LEN, seed=0)
  assert batch.shape == (4, SEQ_LEN + 1) and batch.dtype == np.int32
  assert batch.min() >= 0 and batch.max() < tokenizer.vocab_size
  # Windows are contiguous text: decoding gives words of the corpus.
  assert set(tokenizer.decode(batch[0]).split()[1:-1]) <= set("the quick brown fox jumps over a lazy dog while "
                                                             "seven wizards quietly hex jam".split())


def test_batches_depend_on_seed_and_step_only(char_data):
  _, train, _ = char_data
  np.testing.assert_array_equal(train.batch(3, 8, SEQ_LEN, seed=1), train.batch(3, 8, SEQ_LEN, seed=1))
  assert not np.array_equal(train.batch(3, 8, SEQ_LEN, seed=1), train.batch(4, 8, SEQ_LEN, seed=1))
  assert not np.array_equal(train.batch(3, 8, SEQ_LEN, seed=1), train.batch(3, 8, SEQ_LEN, seed=2))
  # Resume: step 5 drawn alone (a restarted run) equals step 5 of an uninterrupted sequence.
  sequence = [train.batch(step, 8, SEQ_LEN, seed=1) for step in range(6)]
  np.testing.assert_array_equal(sequence[5], train.batch(5, 8, SEQ_LEN, seed=1))


def test_process_slices_concatenate_to_global_batch(char_data):
  _, train, val = char_data
  whole = train.batch(7, 8, SEQ_LEN, seed=0)
  parts = [train.batch(7, 8, SEQ_LEN, seed=0, process_index=i, process_count=4) for i in range(4)]
  assert parts[0].shape == (2, SEQ_LEN + 1)
  np.testing.assert_array_equal(np.concatenate(parts), whole)
  whole_eval = list(val.eval_batches(4, SEQ_LEN, num_batches=2))
  parts_eval = [list(val.eval_batches(4, SEQ_LEN, 2, process_index=i, process_count=2)) for i in range(2)]
  for b in range(2):
    np.testing.assert_array_equal(np.concatenate([p[b] for p in parts_eval]), whole_eval[b])
  with pytest.raises(ValueError, match="divisible by process_count 3"):
    train.batch(0, 8, SEQ_LEN, seed=0, process_count=3, process_index=0)


def test_eval_batches_are_fixed_consecutive_windows(char_data):
  _, _, val = char_data
  first = list(val.eval_batches(4, SEQ_LEN, num_batches=3))
  again = list(val.eval_batches(4, SEQ_LEN, num_batches=3))
  assert len(first) == 3
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  tokens = np.asarray(val.tokens())
  # Window i starts at i * L: each target token is predicted once, the boundary token shared as input.
  np.testing.assert_array_equal(first[1][2], tokens[6 * SEQ_LEN:7 * SEQ_LEN + 1])
  covering = list(val.eval_batches(4, SEQ_LEN))
  assert len(covering) == -(-((val.num_tokens - 1) // SEQ_LEN) // 4)


def test_cache_is_reused_and_incomplete_files_are_not_trusted(tmp_path):
  pattern = _write_corpus(tmp_path / "corpus", num_files=2)
  kwargs = dict(cache_dir=tmp_path / "cache", tokenizer_dir=tmp_path / "tok", val_fraction=0.1, progress=False)
  _, train, val = data.prepare(f"text:{pattern}", "char", **kwargs)
  mtime = train.path.stat().st_mtime_ns
  tokens = np.array(train.tokens())
  _, train_2, _ = data.prepare(f"text:{pattern}", "char", **kwargs)
  assert train_2.path == train.path and train_2.path.stat().st_mtime_ns == mtime  # Not re-tokenised.

  # A killed run's leftover temp file is ignored, and a truncated split file makes the entry untrusted.
  (train.path.parent / "train.bin.tmp-deadbeef").write_bytes(b"\1\2\3")
  with open(train.path, "r+b") as f:
    f.truncate(train.path.stat().st_size // 2)
  _, train_3, val_3 = data.prepare(f"text:{pattern}", "char", **kwargs)
  np.testing.assert_array_equal(np.asarray(train_3.tokens()), tokens)
  assert val_3.num_tokens == val.num_tokens
  meta = json.loads((train.path.parent / "meta.json").read_text())
  assert meta["num_tokens"] == {"train": train.num_tokens, "val": val.num_tokens}

  # Changing a file's content changes the key: a new entry, not stale tokens.
  (tmp_path / "corpus" / "doc_0.txt").write_text("something else entirely " * 50, encoding="utf-8")
  _, train_4, _ = data.prepare(f"text:{pattern}", "char", cache_dir=tmp_path / "cache", val_fraction=0.1,
                               progress=False)
  assert train_4.path.parent != train.path.parent


def test_documents_are_joined_with_eos(tmp_path):
  for name, text in [("a.txt", "hello world"), ("b.txt", "goodbye moon"), ("c.txt", "x" * 200)]:
    (tmp_path / name).write_text(text, encoding="utf-8")
  tokenizer, train, _ = data.prepare(f"text:{tmp_path}/*.txt", "bpe:300", cache_dir=tmp_path / "cache",
                                     val_fraction=0.1, progress=False)
  assert tokenizer.eos_id is not None
  tokens = np.asarray(train.tokens()).tolist()
  assert tokens.count(tokenizer.eos_id) == 2
  assert tokenizer.decode(tokens).startswith("hello world<|endoftext|>goodbye moon<|endoftext|>xxx")


def test_builtin_python_is_nontrivial_and_deterministic():
  first = data.load_corpus("builtin:python", builtin_max_bytes=300_000)
  second = data.load_corpus("builtin:python", builtin_max_bytes=300_000)
  assert first.identity == second.identity
  train_text = list(first.train)
  assert first.train.count > 3 and 250_000 < sum(map(len, train_text)) < 300_000
  assert list(second.train) == train_text and list(first.val) == list(second.val)
  assert any("def " in doc for doc in train_text)
  assert data.load_corpus("builtin:python", builtin_max_bytes=200_000).identity != first.identity


@pytest.mark.parametrize("spec, kind", [("char", "char"), ("bpe:320", "bpe")])
def test_built_tokenizers_are_saved_and_reloaded(tmp_path, spec, kind):
  pattern = _write_corpus(tmp_path / "corpus", num_files=2)
  kwargs = dict(cache_dir=tmp_path / "cache", tokenizer_dir=tmp_path / "tok", val_fraction=0.1, progress=False)
  tokenizer, train, _ = data.prepare(f"text:{pattern}", spec, **kwargs)
  assert tokenizer.kind == kind and (tmp_path / "tok").is_dir()
  saved_mtime = (tmp_path / "tok" / "tokenizer.json").stat().st_mtime_ns
  reloaded, train_2, _ = data.prepare(f"text:{pattern}", spec, **kwargs)
  assert (tmp_path / "tok" / "tokenizer.json").stat().st_mtime_ns == saved_mtime  # Loaded, not rebuilt.
  text = "the lazy wizards jump"
  assert reloaded.encode(text) == tokenizer.encode(text)
  assert train_2.path == train.path  # Same tokenizer fingerprint, so the same cache entry.
  assert tokenizer_lib.load_tokenizer(tmp_path / "tok").encode(text) == tokenizer.encode(text)
  with pytest.raises(ValueError, match="resumed run must keep its tokenizer"):
    data.prepare(f"text:{pattern}", "bpe:400" if spec == "char" else "char", **kwargs)
  (tmp_path / "users_folder").mkdir()
  (tmp_path / "users_folder" / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="users_folder is not empty"):
    data.prepare(f"text:{pattern}", spec, **{**kwargs, "tokenizer_dir": tmp_path / "users_folder"})
  assert (tmp_path / "users_folder" / "notes.txt").read_text() == "mine"


def test_tokenizer_loaded_from_a_folder_is_copied_into_tokenizer_dir(tmp_path):
  pattern = _write_corpus(tmp_path / "corpus", num_files=1)
  tokenizer_lib.train_bpe(["the quick brown fox " * 20], 280).save(tmp_path / "pretrained")
  tokenizer, train, _ = data.prepare(f"text:{pattern}", str(tmp_path / "pretrained"), cache_dir=tmp_path / "cache",
                                     tokenizer_dir=tmp_path / "tok", progress=False)
  assert tokenizer.kind == "bpe" and train.dtype == np.uint16
  assert tokenizer_lib.load_tokenizer(tmp_path / "tok").encode("lazy fox") == tokenizer.encode("lazy fox")


def test_error_glob_matches_nothing(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"No files match the glob .*nothing_here"):
    data.load_corpus(f"text:{tmp_path}/nothing_here/*.txt")


def test_error_empty_files(tmp_path):
  for name in ("a.txt", "b.txt"):
    (tmp_path / name).write_text("")
  with pytest.raises(ValueError, match="no text: 2 documents, all empty"):
    data.load_corpus(f"text:{tmp_path}/*.txt")


def test_error_non_utf8_file_is_named(tmp_path):
  (tmp_path / "good.txt").write_text("fine text", encoding="utf-8")
  (tmp_path / "windows.txt").write_bytes("caf\u00e9 cr\u00e8me".encode("cp1252"))
  with pytest.raises(ValueError, match=r"windows\.txt is not valid UTF-8"):
    data.load_corpus(f"text:{tmp_path}/*.txt")


def test_error_split_shorter_than_a_window(tmp_path):
  (tmp_path / "short.txt").write_text("0123456789" * 3, encoding="utf-8")  # 27 train + 3 val characters.
  _, train, val = data.prepare(f"text:{tmp_path}/*.txt", "char", cache_dir=tmp_path / "cache",
                               val_fraction=0.1, progress=False)
  assert (train.num_tokens, val.num_tokens) == (27, 3)
  with pytest.raises(ValueError, match=r"train split has 27 tokens, fewer than the 33 \(seq_len \+ 1\)"):
    train.batch(0, 2, 32, seed=0)
  with pytest.raises(ValueError, match=r"val split has 3 tokens, fewer than the 17"):
    next(val.eval_batches(2, 16))


def test_error_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 1.5"):
    data.load_corpus("builtin:python", val_fraction=1.5)
  with pytest.raises(ValueError, match="Unknown data source 'wiki'"):
    data.load_corpus("wiki")
  tokenizer = tokenizer_lib.char_tokenizer("abc")
  data.check_vocab_size(tokenizer, 3)
  with pytest.raises(ValueError, match="vocab_size 3 but the model's vocab_size is 2"):
    data.check_vocab_size(tokenizer, 2)


def test_tfds_mock_data_single_text_feature(tmp_path):
  # lm1b has one Text feature, found automatically; mocked TFDS reports no validation split -> holdout.
  with tfds.testing.mock_data(num_examples=40):
    corpus = data.load_corpus("tfds:lm1b", val_fraction=0.25, tfds_data_dir=str(tmp_path))
    assert (corpus.train.count, corpus.val.count) == (30, 10)
    _, train, val = data.prepare("tfds:lm1b", "char", cache_dir=tmp_path / "cache", val_fraction=0.25,
                                 tfds_data_dir=str(tmp_path), progress=False)
  assert train.num_tokens > val.num_tokens > 0
  assert train.batch(0, 2, 8, seed=0).shape == (2, 9)


class GptjaxTinyText(tfds.core.GeneratorBasedBuilder):
  """A real TFDS dataset, prepared on disk as array_record: two Text features, train and validation splits."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    features = {"title": tfds.features.Text(), "body": tfds.features.Text(), "label": tfds.features.ClassLabel(
        num_classes=2)}
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, 30), "validation": self._generate_examples(30, 36)}

  def _generate_examples(self, start, stop):
    for i in range(start, stop):
      yield i, {"title": f"title {i}", "body": f"body number {i} says h\u00e9llo. " * 3, "label": i % 2}


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  GptjaxTinyText(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return str(data_dir)


def test_tfds_prepared_dataset_with_validation_split(tiny_tfds_dir, tmp_path):
  with pytest.raises(ValueError, match=r"2 text features .*tfds:gptjax_tiny_text:<feature>"):
    data.load_corpus("tfds:gptjax_tiny_text", tfds_data_dir=tiny_tfds_dir, download=False)
  corpus = data.load_corpus("tfds:gptjax_tiny_text:body", tfds_data_dir=tiny_tfds_dir, download=False)
  assert (corpus.train.count, corpus.val.count) == (30, 6)  # The validation split, not a holdout.
  assert all(doc.startswith("body number 3") for doc in corpus.val)
  tokenizer, train, val = data.prepare("tfds:gptjax_tiny_text:body", "bpe:300", cache_dir=tmp_path / "cache",
                                       tfds_data_dir=tiny_tfds_dir, download=False, progress=False)
  text = tokenizer.decode(np.asarray(val.tokens()))
  assert text.count("<|endoftext|>") == 5 and "h\u00e9llo" in text
  assert train.batch(0, 4, 8, seed=0).shape == (4, 9)


def test_tfds_unprepared_offline_names_data_dir(tmp_path):
  empty = tmp_path / "no_data_here"
  with pytest.raises(FileNotFoundError) as error:
    data.load_corpus("tfds:gptjax_tiny_text", tfds_data_dir=str(empty), download=False)
  message = str(error.value)
  assert str(empty) in message and f"tfds build gptjax_tiny_text --data_dir {empty}" in message
  with pytest.raises(ValueError, match="no dataset 'no_such_dataset_xyz'"):
    data.load_corpus("tfds:no_such_dataset_xyz", tfds_data_dir=str(empty), download=False)
  assert not os.path.exists(empty / "gptjax_tiny_text" / "1.0.0" / "dataset_info.json")

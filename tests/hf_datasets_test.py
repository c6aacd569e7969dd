"""The `hf:` data source, on datasets this test writes to disk (no network)."""

import datasets
import numpy as np
import pytest

from configs import gpt2_small
from gptjax import data
from gptjax import hf_datasets


def _texts(n):
  return [f"document {i}: the quick brown fox {'jumps ' * (i % 5)}over h\u00e9llo {i}." for i in range(n)]


@pytest.mark.parametrize("spec, expected", [
    ("HuggingFaceFW/fineweb-edu/sample-10BT", ("HuggingFaceFW/fineweb-edu", "sample-10BT", None)),
    ("HuggingFaceFW/fineweb/sample-10BT:train", ("HuggingFaceFW/fineweb", "sample-10BT", "train")),
    ("Skylion007/openwebtext", ("Skylion007/openwebtext", None, None)),
    ("Salesforce/wikitext/wikitext-103-raw-v1:validation", ("Salesforce/wikitext", "wikitext-103-raw-v1",
                                                            "validation")),
])
def test_parse(spec, expected):
  assert hf_datasets.parse(spec) == expected


def test_parse_rejects_extra_segments():
  with pytest.raises(ValueError, match="expected hf:<owner>/<name>"):
    hf_datasets.parse("a/b/c/d")


def test_saved_dataset_holds_out_its_head_and_tokenises_in_workers(tmp_path):
  texts = _texts(40) + [""]  # An empty document is skipped, as for files.
  folder = tmp_path / "saved"
  datasets.Dataset.from_dict({"id": list(range(41)), "text": texts}).save_to_disk(str(folder))
  corpus = data.load_corpus(f"hf:{folder}", val_fraction=0.1)
  assert list(corpus.val) == texts[:4] and list(corpus.train) == texts[4:40]
  assert "holdout_head=4" in corpus.identity
  # Two worker processes give exactly the tokens one process gives.
  results = [data.prepare(f"hf:{folder}", "char", cache_dir=tmp_path / f"cache{n}", val_fraction=0.1,
                          progress=n == 2, num_workers=n) for n in (1, 2)]
  (tok1, train1, val1), (_, train2, val2) = results
  np.testing.assert_array_equal(train1.tokens(), train2.tokens())
  np.testing.assert_array_equal(val1.tokens(), val2.tokens())
  assert tok1.decode(np.asarray(val1.tokens())) == "".join(texts[:4])  # char: no eos between documents.


def test_dataset_dict_uses_its_validation_split_or_the_named_one(tmp_path):
  folder = tmp_path / "dict"
  texts = _texts(12)
  datasets.DatasetDict({
      "train": datasets.Dataset.from_dict({"body": texts[:8], "label": [0] * 8}),
      "validation": datasets.Dataset.from_dict({"body": texts[8:], "label": [1] * 4}),
  }).save_to_disk(str(folder))
  corpus = data.load_corpus(f"hf:{folder}")  # The only string column, `body`, is the text.
  assert list(corpus.train) == texts[:8] and list(corpus.val) == texts[8:]
  named = data.load_corpus(f"hf:{folder}:validation", val_fraction=0.25)  # A named split: its head held out.
  assert list(named.val) == texts[8:9] and list(named.train) == texts[9:]
  with pytest.raises(ValueError, match=r"no split 'test'; the dataset has \['train', 'validation'\]"):
    data.load_corpus(f"hf:{folder}:test")


def test_ambiguous_text_column_is_an_error(tmp_path):
  folder = tmp_path / "two"
  datasets.Dataset.from_dict({"title": ["a", "b"], "body": ["c", "d"]}).save_to_disk(str(folder))
  with pytest.raises(ValueError, match=r"2 string columns \(\['title', 'body'\]\)"):
    data.load_corpus(f"hf:{folder}")


def test_stream_rows_are_skipped_and_taken_lazily():
  texts = _texts(10)
  stream = datasets.Dataset.from_dict({"text": texts}).to_iterable_dataset()
  assert list(hf_datasets._documents(stream, "text", 0, 3)) == texts[:3]  # pylint: disable=protected-access
  rest = hf_datasets._documents(stream, "text", 3, None)  # pylint: disable=protected-access
  assert rest.count is None and list(rest) == texts[3:]


def test_unreachable_hub_dataset_names_it():
  # conftest sets HF_HUB_OFFLINE=1: the hub is never contacted.
  with pytest.raises(RuntimeError, match="Cannot reach Hugging Face dataset 'HuggingFaceFW/fineweb'"):
    data.load_corpus("hf:HuggingFaceFW/fineweb/sample-10BT")


def test_gpt2_small_streams_fineweb():
  assert gpt2_small.get_config().data.source == "hf:HuggingFaceFW/fineweb/sample-10BT"

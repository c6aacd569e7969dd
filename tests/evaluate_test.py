"""Tests for gptjax.evaluate and the scoring under it (gptjax/inference/scoring.py): a tiny GPT-2 (real 50257-token
vocabulary, width 32, context 64) saved by Hugging Face, scored by us and by PyTorch on the same weights and text; real
files, a real TFDS dataset on disk and a real `python -m gptjax.evaluate` subprocess."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
import torch
import transformers

import gptjax
from gptjax import data as data_lib
from gptjax import evaluate
from gptjax.inference import engine as E
from gptjax.language_model import LanguageModel
from gptjax.tokenizer import char_tokenizer
from tests import assets
from tests.hf_reference import next_token_logprobs, window_logprob

EOS = 50256
BLOCK = 64
REPO = pathlib.Path(__file__).resolve().parents[1]
# Enough text for several 64-token windows; "é" and "日本" make bytes differ from characters.
TEXT = ("Evaluation numbers are only comparable when the method is stated: the context, the stride, and what "
        "the loss is divided by. Caf\u00e9 owners in \u65e5\u672c rarely care, but people comparing language "
        "models do. This paragraph is long enough to need several windows of sixty-four tokens, so that the "
        "sliding window, its stride, and the bookkeeping of which tokens are scored all matter to the result. "
        "GPT-2 reported 37.50 on WikiText-103 and 35.13 on LAMBADA for its smallest model; later attempts got "
        "anything from 21 to 48, depending on the de-tokenizer, the stride, and whether they divided by tokens "
        "or by words. Stating the method costs one line; not stating it costs everyone who follows a week.")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  torch.manual_seed(0)
  # initializer_range 0.3 (not 0.02): peaked, position-dependent predictions, so that an off-by-one in which
  # tokens are scored or how much context they get changes the numbers far beyond the tolerance.
  config = transformers.GPT2Config(vocab_size=50257, n_positions=BLOCK, n_embd=32, n_layer=2, n_head=2,
                                   initializer_range=0.3)
  directory = tmp_path_factory.mktemp("tiny_gpt2")
  transformers.GPT2LMHeadModel(config).save_pretrained(directory)
  for name in ("vocab.json", "merges.txt"):
    shutil.copy(assets.gpt2_vocab_dir() / name, directory / name)
  return directory


@pytest.fixture(scope="module")
def lm(model_dir):
  return gptjax.load(model_dir)


@pytest.fixture(scope="module")
def hf_model(model_dir):
  return transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()


def test_perplexity_equals_hugging_face_exp_mean_nll(lm, hf_model):
  text = TEXT[:150]
  ids = [EOS] + lm.tokenizer.encode(text)
  assert len(ids) <= BLOCK
  with torch.no_grad():
    loss = hf_model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()  # mean NLL of ids[1:]
  result = evaluate.perplexity(lm, [text])
  assert result["counts"]["tokens"] == len(ids) - 1
  assert result["settings"]["first_token"] == "scored given <|endoftext|>"
  np.testing.assert_allclose(result["metrics"]["token_perplexity"], math.exp(loss), rtol=1e-4)
  np.testing.assert_allclose(result["metrics"]["bits_per_byte"],
                             loss * (len(ids) - 1) / math.log(2) / len(text.encode()), rtol=1e-5)


@pytest.mark.parametrize("context,stride", [(64, 64), (64, 24), (40, 7)])
def test_sliding_window_matches_target_by_target_reference(lm, hf_model, context, stride):
  stream = [EOS] + lm.tokenizer.encode(TEXT)
  assert len(stream) > 2 * BLOCK
  score = lm.score(TEXT, context=context, stride=stride)
  assert (score.num_tokens, score.num_bytes) == (len(stream) - 1, len(TEXT.encode()))
  np.testing.assert_allclose(score.logprob, window_logprob(hf_model, stream, context, stride),
                             rtol=1e-5)


def test_more_context_changes_the_score(lm):
  # Guards the test above: with no effect of context, a wrong window rule could pass it.
  chunks, overlapping = lm.score(TEXT, stride=BLOCK), lm.score(TEXT, stride=8)
  assert abs(chunks.logprob - overlapping.logprob) > 1.0


def test_stride_equal_to_context_is_independent_chunks(lm, hf_model):
  context = 32
  stream = [EOS] + lm.tokenizer.encode(TEXT)
  # Chunk k feeds stream[kC : kC + C] and predicts stream[kC + 1 : kC + C + 1], with no memory of chunk k - 1.
  expected = sum(next_token_logprobs(hf_model, stream[begin:begin + context + 1]).sum()
                 for begin in range(0, len(stream) - 1, context))
  assert evaluate.sliding_windows(len(stream) - 1, context, context)[1] == (context, 2 * context, context)
  np.testing.assert_allclose(lm.score(TEXT, context=context, stride=context).logprob, expected, rtol=1e-5)


def test_batched_padded_scores_equal_pytorch_text_by_text_and_shapes_are_bucketed(lm, hf_model):
  texts = [TEXT[:n] for n in (5, 30, 60, 90, 120, 200)] + [""]  # 2 to ~45 tokens: four length buckets, one batch.
  before = E.trace_counts().get("score", 0)
  scores = lm.score(texts)
  assert E.trace_counts().get("score", 0) - before <= 4  # Lengths bucket to {8, 16, 32, 64}.
  for text, score in zip(texts[:-1], scores):
    stream = [EOS] + lm.tokenizer.encode(text)
    assert (score.num_tokens, score.num_bytes) == (len(stream) - 1, len(text.encode()))
    np.testing.assert_allclose(score.logprob, next_token_logprobs(hf_model, stream).sum(), rtol=1e-5)
  assert scores[-1] == evaluate.TextScore(0.0, 0, 0)
  single = lm.score(texts[-2])
  assert isinstance(single, evaluate.TextScore) and single.logprob == pytest.approx(scores[-2].logprob, rel=1e-6)
  compiled = E.trace_counts()["score"]
  lm.score([TEXT[:n] for n in (7, 33, 70, 100, 150, 190, 9)])  # The same buckets: nothing new to compile.
  assert E.trace_counts()["score"] == compiled


def test_without_endoftext_the_first_token_is_context_only(lm, hf_model):
  # GPT-1's convention: no <|endoftext|>, so nothing predicts the first token. A char tokenizer has none either.
  tokenizer = char_tokenizer(TEXT)
  assert tokenizer.eos_id is None
  char_lm = LanguageModel(lm.config, lm.params, tokenizer)
  text = TEXT[:50]
  score = char_lm.score(text)
  assert (score.num_tokens, score.num_bytes) == (len(text) - 1, len(text.encode()))
  np.testing.assert_allclose(score.logprob, next_token_logprobs(hf_model, tokenizer.encode(text)).sum(), rtol=1e-5)
  result = evaluate.perplexity(char_lm, [text])
  assert result["settings"]["first_token"].startswith("not scored")


def _split_into_files(directory: pathlib.Path, text: str, cuts: list[int]) -> str:
  directory.mkdir()
  bounds = [0] + cuts + [len(text)]
  for i, (start, stop) in enumerate(zip(bounds, bounds[1:])):
    (directory / f"part_{i:02d}.txt").write_text(text[start:stop], encoding="utf-8")
  return f"text:{directory}/*.txt"


def test_bits_per_byte_is_invariant_to_how_the_text_is_split_into_files(lm, tmp_path):
  cafe = TEXT.index("\u00e9")
  whole = _split_into_files(tmp_path / "one", TEXT, [])
  # Cuts mid-word, right after a two-byte character, and between the two CJK characters.
  pieces = _split_into_files(tmp_path / "four", TEXT, [37, cafe + 1, TEXT.index("\u672c"), 301])
  options = {"context": BLOCK, "stride": 32}
  one, four = (evaluate.run_task(lm, "perplexity", source, **options) for source in (whole, pieces))
  assert one["settings"]["join"] == four["settings"]["join"] == "concat"
  assert one["counts"]["bytes"] == four["counts"]["bytes"] == len(TEXT.encode("utf-8"))
  assert one["counts"]["words"] == four["counts"]["words"] == len(TEXT.split())
  assert four["counts"]["documents"] == 5
  for metric in ("bits_per_byte", "token_perplexity", "word_perplexity"):
    assert one["metrics"][metric] == pytest.approx(four["metrics"][metric], rel=1e-6), metric
  score = lm.score(TEXT, **options)
  assert one["metrics"]["bits_per_byte"] == pytest.approx(-score.logprob / math.log(2) / score.num_bytes,
                                                          rel=1e-6)
  # Scoring the pieces as separate documents is a different measurement (each restarts its context).
  documents = evaluate.run_task(lm, "perplexity", pieces, join="documents", **options)
  assert abs(documents["metrics"]["bits_per_byte"] - four["metrics"]["bits_per_byte"]) > 1e-3


def _write_jsonl(path: pathlib.Path, rows) -> pathlib.Path:
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
  return path


CHOICES = [
    {"context": "The chef tasted the soup and", "endings": ["added salt.", "flew to the moon.", "sang"], "label": 0},
    {"context": "She opened the door", "endings": ["and walked in.", "quietly"], "label": 1},
    {"context": "Long story. " * 30 + "In the end, the hero", "endings": ["won.", "lost the war badly.",
                                                                         "went home", "slept"], "label": 3},
]


def _brute_force_choice(lm, hf_model, example):
  """Per ending: (log p(" " + ending | context) by PyTorch, its UTF-8 bytes), cutting contexts on the left."""
  context_ids = lm.tokenizer.encode(example["context"])
  out = []
  for ending in example["endings"]:
    ending_ids = lm.tokenizer.encode(" " + ending)
    stream = ([EOS] + context_ids + ending_ids)[-(BLOCK + 1):]
    out.append((next_token_logprobs(hf_model, stream)[-len(ending_ids):].sum(), len((" " + ending).encode())))
  return out


def test_multiple_choice_agrees_with_brute_force(lm, hf_model, tmp_path):
  path = _write_jsonl(tmp_path / "choices.jsonl", CHOICES)
  result = evaluate.run_task(lm, "multiple_choice", str(path))
  expected = [_brute_force_choice(lm, hf_model, example) for example in CHOICES]
  for got, want in zip(result["scores"], expected):
    np.testing.assert_allclose(got, [lp for lp, _ in want], rtol=1e-5)
  acc = np.mean([np.argmax([lp for lp, _ in w]) == e["label"] for w, e in zip(expected, CHOICES)])
  acc_norm = np.mean([np.argmax([lp / n for lp, n in w]) == e["label"] for w, e in zip(expected, CHOICES)])
  assert result["metrics"] == pytest.approx({"acc": acc, "acc_norm": acc_norm})
  assert result["counts"] == {"examples": 3, "endings": 9, "truncated": 4}  # The long context, for each ending.


def _greedy_passage(lm, hf_model) -> str:
  """A passage whose last word is the model's greedy next token after the rest (so LAMBADA counts it right)."""
  for start in ("The cat sat on the", "Once upon a time there was a", "He said that the", "We went to the",
                "It was the", "I think that", "They all wanted", "Nobody knew the", "A small"):
    with torch.no_grad():
      token = int(hf_model(torch.tensor([[EOS] + lm.tokenizer.encode(start)])).logits[0, -1].argmax())
    word = lm.tokenizer.decode([token])
    if word.startswith(" ") and word[1:].isalpha() and lm.tokenizer.encode(word) == [token]:
      return start + word
  pytest.fail("no context among the candidates has a whole-word greedy continuation")


def test_lambada_agrees_with_brute_force(lm, hf_model, tmp_path):
  passages = [_greedy_passage(lm, hf_model), "The weather today is quite unpredictable", TEXT[:200] + " Zanzibarian",
              "word " * 80 + "finale"]
  path = _write_jsonl(tmp_path / "lambada.jsonl", [{"text": p + "\n"} for p in passages])
  result = evaluate.run_task(lm, "lambada", f"jsonl:{path}")
  correct, logprobs = [], []
  for passage in passages:
    context, word = passage.rsplit(" ", 1)
    target_ids = lm.tokenizer.encode(" " + word)
    stream = ([EOS] + lm.tokenizer.encode(context) + target_ids)[-(BLOCK + 1):]
    with torch.no_grad():
      logits = hf_model(torch.tensor([stream[:-1]])).logits[0, -len(target_ids):]
    correct.append(logits.argmax(-1).tolist() == target_ids)
    logprobs.append(next_token_logprobs(hf_model, stream)[-len(target_ids):].sum())
  assert correct[0] and not all(correct)
  assert result["metrics"]["acc"] == pytest.approx(np.mean(correct))
  assert result["metrics"]["ppl"] == pytest.approx(math.exp(-np.mean(logprobs)), rel=1e-4)
  assert result["counts"] == {"examples": 4, "truncated": 1}


class GptjaxEvalChoices(tfds.core.GeneratorBasedBuilder):
  """A real TFDS dataset laid out like HellaSwag / Story Cloze (context, endings, label), prepared on disk."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "context": tfds.features.Text(), "endings": tfds.features.Sequence(tfds.features.Text()),
        "label": np.int32}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"validation": self._generate_examples()}

  def _generate_examples(self):
    for i, example in enumerate(CHOICES):
      yield i, example


def test_multiple_choice_from_tfds_equals_jsonl(lm, tmp_path):
  data_dir = tmp_path / "tfds"
  GptjaxEvalChoices(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  from_tfds = evaluate.run_task(lm, "multiple_choice", "tfds:gptjax_eval_choices", split="validation",
                                tfds_data_dir=str(data_dir))
  from_list = evaluate.run_task(lm, "multiple_choice", CHOICES)
  assert from_tfds["metrics"] == from_list["metrics"] and from_tfds["counts"] == from_list["counts"]
  # TFDS stores examples in its own (hashed) order: match them by their scores' sets.
  rounded = lambda scores: sorted(tuple(np.round(s, 4).tolist()) for s in scores)
  assert rounded(from_tfds["scores"]) == rounded(from_list["scores"])
  with pytest.raises(ValueError, match=r"no split 'test'; it has \['validation'\]"):
    evaluate.run_task(lm, "multiple_choice", "tfds:gptjax_eval_choices", tfds_data_dir=str(data_dir))


def test_trainer_val_split_is_read_through_data_load_corpus(lm, tmp_path):
  source = _split_into_files(tmp_path / "corpus", TEXT * 2, [100, 500])
  val = list(data_lib.load_corpus(source, val_fraction=0.25, download=False).val)
  result = evaluate.run_task(lm, "perplexity", source, split="val", val_fraction=0.25)
  assert result["counts"]["bytes"] == len("".join(val).encode())
  assert result["metrics"] == evaluate.perplexity(lm, val, join="concat")["metrics"]


@pytest.mark.parametrize("rows,task,match", [
    (["", "  "], "multiple_choice", "Nothing to evaluate"),
    ([CHOICES[0], "", {"context": "x", "endings": ["a", "b"]}], "multiple_choice",
     r"choices.jsonl line 3: missing field 'label'"),
    ([dict(CHOICES[1], label=2)], "multiple_choice", r"line 1: label 2 is out of range for 2 endings \(expected "
     r"0..1\)"),
    ([dict(CHOICES[1], endings=[])], "multiple_choice", "line 1: 'endings' must be a non-empty list"),
    (['{"context": "x", '], "multiple_choice", "line 1: not valid JSON"),
    ([{"text": "a b"}, {"txt": "c d"}], "lambada", r"line 2: missing field 'text' \(has \['txt'\]\)"),
    ([{"text": "nospace"}], "lambada", "line 1: a LAMBADA passage needs a context, a space and a last word"),
    ([{"context": "x", "endings": ["a" * 400], "label": 0}], "multiple_choice",
     "line 1 ending 0: the text to score has 101 tokens, more than the model's context block_size=64"),
])
def test_bad_jsonl_gets_a_clear_error(lm, tmp_path, rows, task, match):
  path = _write_jsonl(tmp_path / "choices.jsonl", rows)
  with pytest.raises(ValueError, match=match):
    evaluate.run_task(lm, task, str(path))


def test_bad_settings_get_clear_errors(lm, tmp_path):
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ValueError, match="1 documents, all empty"):
    evaluate.run_task(lm, "perplexity", f"text:{tmp_path}/*.txt")
  with pytest.raises(FileNotFoundError, match="No files match"):
    evaluate.run_task(lm, "perplexity", f"text:{tmp_path}/nothing*.txt")
  with pytest.raises(ValueError, match=r"context must be in \[1, 64\] \(the model's block_size\), got 65"):
    lm.score(TEXT, context=65)
  with pytest.raises(ValueError, match=r"stride must be in \[1, context=32\], got 33"):
    evaluate.perplexity(lm, [TEXT], context=32, stride=33)
  with pytest.raises(ValueError, match="Task 'lambada' has no option 'stride'"):
    evaluate.run_task(lm, "lambada", ["a b"], stride=3)
  with pytest.raises(ValueError, match="Unknown task 'hellaswag'"):
    evaluate.run_task(lm, "hellaswag", ["a b"])
  with pytest.raises(ValueError, match="split 'test' names a TFDS split, but 'text:x' is not a TFDS source"):
    evaluate.run_task(lm, "perplexity", "text:x", split="test")
  with pytest.raises(ValueError, match="has no splits; got split 'val'"):
    evaluate.run_task(lm, "lambada", "passages.jsonl", split="val")
  with pytest.raises(ValueError, match="This model has no tokenizer"):
    evaluate.run_task(LanguageModel(lm.config, lm.params), "perplexity", ["a b"])


def _run_cli(*args, cwd):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "gptjax.evaluate", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def test_command_line_prints_a_table_and_writes_json(lm, model_dir, tmp_path):
  source = _split_into_files(tmp_path / "text", TEXT, [120])
  out = tmp_path / "results" / "ppl.json"
  run = _run_cli("--model", str(model_dir), "--task", "perplexity", "--data", source, "--stride", "16",
                 "--output", str(out), "--noprogress", cwd=tmp_path)
  assert run.returncode == 0, run.stderr
  result = json.loads(out.read_text())
  expected = evaluate.run_task(lm, "perplexity", source, stride=16)
  assert result["model"] == str(model_dir) and result["settings"] == expected["settings"]
  assert result["counts"] == expected["counts"]
  assert result["metrics"] == pytest.approx(expected["metrics"], rel=1e-6)
  lines = run.stdout.splitlines()
  row = next(line for line in lines if line.startswith("bits_per_byte"))
  assert float(row.split()[1]) == pytest.approx(expected["metrics"]["bits_per_byte"], abs=1e-4)
  assert any(line.split() == ["stride", "16"] for line in lines)


def test_command_line_bad_input_exits_with_the_message(model_dir, tmp_path):
  path = _write_jsonl(tmp_path / "mc.jsonl", [CHOICES[0], {"context": "x", "endings": ["a"]}])
  run = _run_cli("--model", str(model_dir), "--task", "multiple_choice", "--data", str(path), cwd=tmp_path)
  assert run.returncode == 2  # A user's mistake (gptjax.console): one line, exit status 2.
  assert run.stderr.strip().splitlines()[-1].startswith(f"error: {path} line 2: missing field 'label'")
  assert "Traceback" not in run.stderr and not (tmp_path / "eval_results.json").exists()

"""Evaluation with a stated method: perplexity (sliding window), bits per byte, LAMBADA, multiple choice, and
generation (corpus BLEU and ROUGE-L of source -> target predictions, `generation`).

Papers' numbers are hard to match when the method is not stated; every number here comes with its method, and the
JSON written by `python -m gptjax.evaluate` records the settings beside the metrics.

Scoring a text. A text is tokenised on its own. With GPT-2's convention the stream is `<|endoftext|>` followed by
the text's tokens, so the first token is predicted from `<|endoftext|>` and every token is scored. A tokenizer
without that token (GPT-1) leaves nothing to predict the first token from: it is context only and is not scored
(`num_tokens` counts the scored tokens; `num_bytes` still counts every UTF-8 byte of the text).

Sliding window (texts longer than the context). Write the stream as pairs (x_i -> x_{i+1}), i = 0..n-1. Windows
start at 0, stride, 2*stride, ... and each feeds up to `context` inputs. The first window scores all its targets;
every later window scores only the targets no earlier window scored (its last `stride` ones, fewer at the end),
given the rest of the window as context; the window that reaches the end is the last. So stride == context cuts
the text into independent chunks, and stride 1 gives every token the longest context the model allows. It is the
scheme of Hugging Face's perplexity guide, counted in (input -> target) pairs so that a window of `context` inputs
scores up to `context` targets. Defaults: context = the model's block_size (1024 for GPT-2, as in its paper);
stride = context // 2. The GPT-2 paper does not state its stride; half a context gives every token after the first
window at least context - stride tokens of context (512 for GPT-2), at twice the cost of independent chunks.

Metrics, from the summed natural-log probability `logprob` of N scored tokens of texts with B UTF-8 bytes and W
whitespace-separated words:
  token_perplexity = exp(-logprob / N); bits_per_byte = -logprob / ln(2) / B; word_perplexity = exp(-logprob / W).
Bits per byte and word perplexity do not depend on the tokenizer, so models with different tokenizers compare.

Requests are sorted by length and batched; the inference engine (`Engine.score`) pads a batch on the right to its
bucketed length with an attention mask, and every batch of a call has the same number of rows, so a whole
evaluation compiles a handful of shapes rather than one per text (`gptjax/inference/scoring.py`).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Optional, Union

import numpy as np

from gptjax.eval_data import TASKS, TRAINING_SPLITS, Records, check_choice_example, check_generation_example
from gptjax.eval_data import load_task_data
from gptjax.eval_data import references as eval_references
from gptjax.inference.scoring import ScoreRequest as _Request
from gptjax.inference.scoring import TextScore, score_texts, sliding_windows  # noqa: F401  (part of this API)
from gptjax.inference.scoring import progress_bar as _progress
from gptjax.inference.scoring import check_context as _check_context
from gptjax.inference.scoring import run_requests as _run_requests
from gptjax.inference.scoring import score_prefix as _prefix
from gptjax.inference.scoring import text_tokenizer as _tokenizer

JOINS = ("concat", "documents")
DEFAULT_BATCH_SIZE = 8


# ----------------------------------------------------------------------------------------------------------------
# Scoring: requests -> batched, jitted log-probabilities.


def _continuation_requests(lm, pairs: Sequence[tuple[str, str]], where: Sequence[str]
                           ) -> tuple[list[_Request], int]:
  """Requests scoring each continuation given its context; contexts too long are cut on the left.

  Returns the requests and how many contexts were cut.
  """
  tokenizer, prefix, block_size = _tokenizer(lm), _prefix(lm), lm.config.block_size
  contexts = tokenizer.encode_batch([c for c, _ in pairs])
  continuations = tokenizer.encode_batch([c for _, c in pairs])
  requests, num_truncated = [], 0
  for context_ids, continuation_ids, (_, continuation), label in zip(contexts, continuations, pairs, where):
    if not continuation_ids:
      raise ValueError(f"{label}: the text to score {continuation!r} has no tokens")
    if len(continuation_ids) > block_size:
      raise ValueError(f"{label}: the text to score has {len(continuation_ids)} tokens, more than the model's "
                       f"context block_size={block_size}")
    stream = np.asarray(prefix + context_ids + continuation_ids, np.int64)
    if len(stream) - 1 > block_size:
      stream = stream[len(stream) - 1 - block_size:]  # Keep the context's last tokens, as a reader would.
      num_truncated += 1
    requests.append(_Request(stream[:-1], stream[1:], len(stream) - 1 - len(continuation_ids)))
  return requests, num_truncated


# ----------------------------------------------------------------------------------------------------------------
# Tasks.


def perplexity(lm, documents: Sequence[str], *, context: Optional[int] = None, stride: Optional[int] = None,
               join: str = "documents", batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> dict:
  """Token perplexity, bits per byte and word perplexity of `documents` with a sliding window.

  Args:
    lm: A `gptjax.LanguageModel` with a tokenizer.
    documents: Texts. `join='concat'` reads them as consecutive pieces of one text (e.g. files of a corpus
      split anywhere); `join='documents'` scores each alone, its first token given `<|endoftext|>`.
    context: Window length in tokens (default: the model's block_size; 1024 for GPT-2).
    stride: Step between windows (default: context // 2). stride == context gives independent chunks.
    join: 'concat' or 'documents' (above).
    batch_size: Rows per forward pass.
    progress: Show a progress bar on stderr.

  Returns:
    A dict: `metrics` (token_perplexity, bits_per_byte, word_perplexity, nll_per_token), `counts` (documents,
    tokens, bytes, words) and `settings` (context, stride, join, first_token).
  """
  if join not in JOINS:
    raise ValueError(f"join must be one of {JOINS}, got {join!r}")
  documents = list(documents)
  if not documents or not any(documents):
    raise ValueError(f"Nothing to evaluate: {len(documents)} documents, all empty" if documents else
                     "Nothing to evaluate: the dataset has no documents")
  context, stride = _check_context(lm, context, stride)
  texts = ["".join(documents)] if join == "concat" else [d for d in documents if d]
  scores = score_texts(lm, texts, context=context, stride=stride, batch_size=batch_size, progress=progress)
  logprob = sum(s.logprob for s in scores)
  num_tokens, num_bytes = sum(s.num_tokens for s in scores), sum(s.num_bytes for s in scores)
  num_words = sum(len(t.split()) for t in texts)  # On the joined text: a word cut between two files counts once.
  if num_tokens == 0:
    raise ValueError("Nothing to evaluate: the text has no scored tokens (a one-token text with a tokenizer that "
                     "has no <|endoftext|> to predict the first token from)")
  nll = -logprob
  return {
      "metrics": {
          "token_perplexity": math.exp(nll / num_tokens),
          "bits_per_byte": nll / math.log(2) / num_bytes,
          "word_perplexity": math.exp(nll / num_words) if num_words else None,  # None: JSON has no NaN.
          "nll_per_token": nll / num_tokens,
      },
      "counts": {"documents": len(documents), "tokens": num_tokens, "bytes": num_bytes, "words": num_words},
      "settings": {"context": context, "stride": stride, "join": join, "first_token": _first_token_rule(lm)},
  }


def _first_token_rule(lm) -> str:
  return ("scored given <|endoftext|>" if _prefix(lm) else
          "not scored (the tokenizer has no <|endoftext|> to predict it from)")


def lambada(lm, passages: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
            where: Optional[Sequence[str]] = None) -> dict:
  """LAMBADA: predict each passage's last word from the rest.

  The passage (trailing whitespace removed) is cut at its last space: context = the text before it, target =
  " " + last word. `acc` counts a passage right when greedy decoding from the context reproduces every token of
  the target (teacher-forced argmax at each target token); `ppl` = exp(-mean log p(target | context)), a
  per-word perplexity since each target is one word. Contexts longer than the model are cut on the left.

  Args:
    lm: A `gptjax.LanguageModel` with a tokenizer.
    passages: Texts whose last word is the target.
    batch_size: Rows per forward pass.
    progress: Show a progress bar on stderr.
    where: Optional names of the passages for error messages (e.g. 'file.jsonl line 7').

  Returns:
    A dict with `metrics` (acc, ppl), `counts` (examples, truncated) and `settings`.
  """
  passages = list(passages)
  if not passages:
    raise ValueError("Nothing to evaluate: the dataset has no passages")
  where = list(where) if where is not None else [f"passage {i}" for i in range(len(passages))]
  pairs = []
  for passage, label in zip(passages, where):
    context, space, word = passage.rstrip().rpartition(" ")
    if not space or not context.strip() or not word:
      raise ValueError(f"{label}: a LAMBADA passage needs a context, a space and a last word; got {passage!r:.80}")
    pairs.append((context, " " + word))
  requests, num_truncated = _continuation_requests(lm, pairs, where)
  logprob, greedy = _run_requests(lm, requests, batch_size, progress)
  return {
      "metrics": {"acc": float(greedy.mean()), "ppl": math.exp(-float(logprob.mean()))},
      "counts": {"examples": len(passages), "truncated": num_truncated},
      "settings": {"target": "last space-separated word, with its leading space",
                   "acc": "greedy decode reproduces every target token",
                   "first_token": _first_token_rule(lm), "long_context": "cut on the left"},
  }


def _checked(examples, where, check) -> tuple[list, list]:
  """(examples, their names) as lists, each example passed through `check(example, name)`; none is an error."""
  examples = list(examples)
  if not examples:
    raise ValueError("Nothing to evaluate: the dataset has no examples")
  where = list(where) if where is not None else [f"example {i}" for i in range(len(examples))]
  for example, label in zip(examples, where):
    check(example, label)
  return examples, where


def multiple_choice(lm, examples: Sequence[dict], *, separator: str = " ", batch_size: int = DEFAULT_BATCH_SIZE,
                    progress: bool = False, where: Optional[Sequence[str]] = None) -> dict:
  """HellaSwag / Story Cloze style: pick the ending the model finds most likely after the context.

  Each ending e is scored as log p(separator + e | context). `acc` picks the largest summed log-probability;
  `acc_norm` the largest log-probability per UTF-8 byte of `separator + e` (longer endings are not penalised for
  their length). Contexts longer than the model are cut on the left.

  Args:
    lm: A `gptjax.LanguageModel` with a tokenizer.
    examples: Dicts with `context` (str), `endings` (list of str) and `label` (index of the right ending).
    separator: Put between the context and each ending.
    batch_size: Rows per forward pass.
    progress: Show a progress bar on stderr.
    where: Optional names of the examples for error messages.

  Returns:
    A dict with `metrics` (acc, acc_norm), `counts`, `settings` and `scores` (per example, the ending
    log-probabilities).
  """
  examples, where = _checked(examples, where, check_choice_example)
  pairs, pair_where = [], []
  for example, label in zip(examples, where):
    for j, ending in enumerate(example["endings"]):
      pairs.append((example["context"], separator + ending))
      pair_where.append(f"{label} ending {j}")
  requests, num_truncated = _continuation_requests(lm, pairs, pair_where)
  logprob, _ = _run_requests(lm, requests, batch_size, progress)
  num_bytes = np.asarray([len(c.encode("utf-8")) for _, c in pairs])
  correct = correct_norm = 0
  scores, start = [], 0
  for example in examples:
    stop = start + len(example["endings"])
    scores.append(logprob[start:stop].tolist())
    correct += int(np.argmax(logprob[start:stop]) == example["label"])
    correct_norm += int(np.argmax(logprob[start:stop] / num_bytes[start:stop]) == example["label"])
    start = stop
  return {
      "metrics": {"acc": correct / len(examples), "acc_norm": correct_norm / len(examples)},
      "counts": {"examples": len(examples), "endings": len(pairs), "truncated": num_truncated},
      "settings": {"separator": separator, "acc": "argmax of summed log-prob",
                   "acc_norm": "argmax of log-prob per UTF-8 byte of separator + ending",
                   "first_token": _first_token_rule(lm), "long_context": "cut on the left"},
      "scores": scores,
  }


def generation(lm, examples: Sequence[dict], *, template: Optional[str] = None, max_new_tokens: Optional[int] = None,
               num_beams: int = 1, length_penalty: float = 1.0, early_stopping=False, no_repeat_ngram_size: int = 0,
               min_new_tokens: int = 0, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
               where: Optional[Sequence[str]] = None) -> dict:
  """Source -> target generation scored against references: corpus BLEU (sacreBLEU) and ROUGE-L (`rouge-score`).

  Each source is laid out with the template (`gptjax/seq2seq.py`) and its target generated: greedy, or beam search
  with `num_beams` > 1 (Hugging Face's, `gptjax/inference/beam.py`), until the template's end marker or
  `max_new_tokens`. The metrics' exact methods are `gptjax/text_metrics.py`'s, stated in `settings` (sacreBLEU's
  signature among them) with the decoding.

  Args:
    lm: A `gptjax.LanguageModel`: one fine-tuned with `finetune.task = 'generation'` uses its own template; any
      other is prompted zero-shot with `template` (default GPT-2's "{source}\nTL;DR: {target}<|endoftext|>").
    examples: Dicts with `source` and `target` (or `targets`, several references).
    template: The layout for a model not fine-tuned for generation.
    max_new_tokens: Most tokens per target (default: the fine-tuning's `max_new_tokens`, at most half the context).
    num_beams, length_penalty, early_stopping, no_repeat_ngram_size, min_new_tokens: `lm.generate`'s.
    batch_size: Sources per `generate` call.
    progress: Show a progress bar on stderr.
    where: Optional names of the examples for error messages.

  Returns:
    A dict with `metrics` (bleu, rougeL), `counts`, `settings` and `predictions`.
  """
  from gptjax import seq2seq, text_metrics  # pylint: disable=g-import-not-at-top
  examples, where = _checked(examples, where, check_generation_example)
  tuned = getattr(lm.head, "spec", None)
  if tuned is not None and tuned.kind == seq2seq.TASK:
    if template is not None and template != tuned.template:
      raise ValueError(f"template={template!r}: this model was fine-tuned with template {tuned.template!r}, which "
                       "it uses")
    spec = tuned
  else:
    spec = seq2seq.GenerationSpec(template=template or seq2seq.TLDR_TEMPLATE)
  n = seq2seq.default_max_new_tokens(lm, spec) if max_new_tokens is None else max_new_tokens
  decoding = dict(num_beams=num_beams, no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens)
  if num_beams > 1:
    decoding.update(length_penalty=length_penalty, early_stopping=early_stopping)
  predictions = seq2seq.generate_targets(lm, spec, [e["source"] for e in examples], max_new_tokens=n,
                                         batch_size=batch_size, progress=lambda b: _progress(b, progress, "batch"),
                                         **decoding)
  references = [eval_references(e) for e in examples]
  scores = text_metrics.generation_metrics(predictions, references)
  method = (f"beam search, Hugging Face's (num_beams={num_beams}, length_penalty={length_penalty}, "
            f"early_stopping={early_stopping})" if num_beams > 1 else "greedy")
  return {
      "metrics": scores["metrics"],
      "counts": {"examples": len(examples), "references": sum(map(len, references))},
      "settings": {"decoding": method, "max_new_tokens": n, "no_repeat_ngram_size": no_repeat_ngram_size,
                   "min_new_tokens": min_new_tokens, "template": spec.template,
                   "stop": "the template's end marker (or max_new_tokens)", **scores["settings"]},
      "predictions": predictions,
  }


# ----------------------------------------------------------------------------------------------------------------
# One entry point for the command line and the trainer.


def default_join(source: Optional[str]) -> str:
  """Perplexity's join when none is given: files of a `text:` glob are pieces of one text; else documents."""
  return "concat" if source is not None and source.startswith("text:") else "documents"


def run_task(lm, task: str, data: Union[str, Records, Sequence], **options) -> dict:
  """Runs one task and returns its result dict (`task`, `data`, `metrics`, `counts`, `settings`, `seconds`).

  Args:
    lm: A `gptjax.LanguageModel` with a tokenizer.
    task: 'perplexity', 'lambada', 'multiple_choice' or 'generation'.
    data: A source string (see `load_task_data`), the `Records` it returns, or the items themselves: documents
      (perplexity), passages (lambada) or example dicts (multiple_choice, generation).
    **options: The task function's keyword arguments (context, stride, join, separator, batch_size, progress;
      generation's template and decoding),
      `split`, `tfds_data_dir`, `field` and `val_fraction` for reading a source, and `max_examples` (keep the
      first N; 0 or None: all). A perplexity `join` left None is 'concat' for `text:` sources and 'documents' otherwise.

  Returns:
    The task function's dict, with `task`, `data` and `seconds` added.
  """
  if task not in TASKS:
    raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}")
  read_options = {k: options.pop(k) for k in ("split", "tfds_data_dir", "field", "val_fraction") if k in options}
  max_examples = options.pop("max_examples", None)
  start = time.perf_counter()
  if isinstance(data, str):
    records = load_task_data(task, data, **read_options)
  elif isinstance(data, Records):
    records = data
  else:
    records = Records(list(data), [f"example {i}" for i in range(len(data))])
  items, where = records.items[:max_examples or None], records.where[:max_examples or None]
  if task == "perplexity":
    if options.get("join") is None:
      options["join"] = default_join(data if isinstance(data, str) else None)
    function = perplexity
  else:
    function = {"lambada": lambada, "multiple_choice": multiple_choice, "generation": generation}[task]
    options["where"] = where
  try:
    result = function(lm, items, **options)
  except TypeError as e:
    if "unexpected keyword argument" not in str(e):
      raise
    raise ValueError(f"Task {task!r} has no option {str(e).rsplit('argument', 1)[-1].strip()}") from None
  return {"task": task, "data": data if isinstance(data, str) else f"<{len(items)} items>", **result,
          "seconds": round(time.perf_counter() - start, 3)}


def format_table(result: dict) -> str:
  """The metrics, counts and settings of a `run_task` result as aligned text."""
  rows = [(k, _fmt(v)) for k, v in result["metrics"].items()]
  rows += [(f"num_{k}", str(v)) for k, v in result["counts"].items()]
  rows += [(k, str(v)) for k, v in result["settings"].items()]
  width = max(len(k) for k, _ in rows)
  lines = [f"task: {result['task']}    data: {result['data']}", f"{'metric':<{width}}  value",
           f"{'-' * width}  {'-' * 12}"]
  return "\n".join(lines + [f"{k:<{width}}  {v}" for k, v in rows])


def _fmt(value: Optional[float]) -> str:
  if value is None:
    return "n/a"
  return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.6g}"


def write_json(result: dict, path: Union[str, os.PathLike]) -> pathlib.Path:
  """Writes `result` to `path` (parents created)."""
  path = pathlib.Path(path).expanduser()
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2) + "\n")
  return path


# ----------------------------------------------------------------------------------------------------------------
# python -m gptjax.evaluate (flags are defined only here, so importing this module defines none).


def main(argv: Sequence[str]) -> None:
  """Loads the model, runs the task, prints the table and writes the JSON."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from gptjax import compilation_cache  # pylint: disable=g-import-not-at-top
  from gptjax.language_model import load  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  compilation_cache.enable()  # Before the first compile: a rerun reads its programs back (gptjax/compilation_cache.py).
  f = flags.FLAGS
  options = {"batch_size": f.batch_size, "progress": f.progress, "max_examples": f.max_examples}
  if f.task == "perplexity":
    options.update(context=f.context, stride=f.stride, join=f.join or default_join(f.data))
  elif f.task == "multiple_choice":
    options.update(separator=f.separator)
  elif f.task == "generation":
    from gptjax import decoding_flags  # pylint: disable=g-import-not-at-top
    options.update(decoding_flags.options(sampling=()), template=f.template, max_new_tokens=f.max_new_tokens)
  if f.task != "generation":
    given = [f"--{name}" for name in _GENERATION_FLAGS if f[name].present]
    if given:
      raise ValueError(f"only --task generation takes {', '.join(given)}; this is --task {f.task}")
  # Bad input raises ValueError / OSError naming what and where: `gptjax.console` reports it as one `error:` line.
  # The data first: a malformed line is reported in seconds, before a large model is loaded.
  records = load_task_data(f.task, f.data, split=f.split, tfds_data_dir=f.tfds_data_dir, field=f.field,
                           **_run_split_settings(f.model, f.data, f.split, f.val_fraction))
  lm = load(f.model)
  if f.quantize:  # Weight-only int8 / int4 (gptjax/inference/quantize.py).
    lm = lm.quantize(f.quantize) if lm.quantization is None else lm
  if f.tokenizer:
    from gptjax.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
    lm.tokenizer = load_tokenizer(f.tokenizer)
  result = {"model": f.model, **run_task(lm, f.task, records, **options), "data": f.data, "split": f.split}
  print(format_table(result))
  if f.output:
    print(f"wrote {write_json(result, f.output)}")


def _run_split_settings(model: str, source: str, split: Optional[str], val_fraction: Optional[float]) -> dict:
  """How to split `source` into train/val: the flags, else the training run's own data config.

  With `--model` a gptjax workdir trained on `source`, `--split val` must read the very documents the run
  validated on, so its `val_fraction` and `builtin_max_bytes` are taken from the run's `config.json`.
  """
  from gptjax import checkpoint  # pylint: disable=g-import-not-at-top
  settings = {"val_fraction": val_fraction}
  if split in TRAINING_SPLITS and checkpoint.is_workdir(model):
    run_data = checkpoint.read_run_config(model).get("data", {})
    if run_data.get("source") == source:
      if val_fraction is None:
        settings["val_fraction"] = run_data.get("val_fraction")
      settings["builtin_max_bytes"] = run_data.get("builtin_max_bytes")
  return settings


_GENERATION_FLAGS = ("template", "max_new_tokens", "num_beams", "length_penalty", "early_stopping",
                     "no_repeat_ngram_size", "min_new_tokens")


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("model", None, "HF folder (save_pretrained / LanguageModel.save) or hub name.", required=True)
  flags.DEFINE_enum("task", None, list(TASKS), "What to measure.", required=True)
  flags.DEFINE_enum("quantize", None, ["int8", "int4"], "Weight-only quantization of the model before the task.")
  flags.DEFINE_string("data", None, "text:<glob> | jsonl:<path> | <path>.jsonl | tfds:<name>[:<field>] | "
                      "builtin:python (see gptjax/eval_data.py).",
                      required=True)
  flags.DEFINE_string("split", None, "'train'/'val': the trainer's split of the source (builtin:python: 'val'); "
                      "another name: a TFDS split (default 'test'); unset for text:: every file.")
  flags.DEFINE_float("val_fraction", None, "With --split=train/val: the held-out fraction of the trainer's config.")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
  flags.DEFINE_string("field", None, "Text field for perplexity/lambada (default: 'text' in JSONL, the only "
                      "string feature in TFDS).")
  flags.DEFINE_integer("context", None, "perplexity: window length in tokens (default: the model's block_size).")
  flags.DEFINE_integer("stride", None, "perplexity: step between windows (default: context // 2).")
  flags.DEFINE_enum("join", None, list(JOINS), "perplexity: 'concat' reads the documents as one text (default for "
                    "text:), 'documents' scores each alone (default otherwise).")
  flags.DEFINE_string("separator", " ", "multiple_choice: put between the context and each ending.")
  flags.DEFINE_string("template", None, "generation: the layout for a model not fine-tuned for generation (default "
                      "\"{source}\\nTL;DR: {target}<|endoftext|>\"); a fine-tuned one uses its own.")
  flags.DEFINE_integer("max_new_tokens", None, "generation: most tokens per target (default: the model's "
                       "fine-tuning setting, at most half the context).")
  from gptjax import decoding_flags  # pylint: disable=g-import-not-at-top
  decoding_flags.define()
  flags.DEFINE_string("tokenizer", None, "Tokenizer folder or name, when the model folder has none.")
  flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Rows per forward pass.")
  flags.DEFINE_integer("max_examples", 0, "Evaluate only the first N documents/examples (0: all).")
  flags.DEFINE_string("output", "eval_results.json", "Where to write the JSON result ('' to skip).")
  flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")


if __name__ == "__main__":
  from gptjax import console  # pylint: disable=g-import-not-at-top  (the shared error path and console policy)
  _define_flags()
  console.run(main)

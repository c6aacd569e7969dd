"""Generation metrics through the kept reference libraries: corpus BLEU by sacreBLEU, ROUGE-L by `rouge-score`.

Neither is reimplemented here: a BLEU written anew differs from sacreBLEU's in tokenisation and smoothing, and the
numbers would not compare with papers'. sacreBLEU's signature (`nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|
version:2.6.0`) goes beside every score, so a reader knows the exact settings. ROUGE-L is Google's `rouge-score`
(the Python port of ROUGE-1.5.5): the sentence-level longest common subsequence F-measure (`rougeL`, not the
summary-level `rougeLsum`), its default tokeniser (lower-cased, non-alphanumerics dropped), no stemming; with
several references an example scores its best one (`score_multi`), and the corpus score is the mean over examples.
Both are on a 0-100 scale.

Install them with `pip install 'gptjax[metrics]'` (the test extra includes them).
"""

from __future__ import annotations

from collections.abc import Sequence


def _require(module: str, package: str):
  import importlib  # pylint: disable=g-import-not-at-top
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ImportError(f"Generation metrics need the {package!r} package: pip install 'gptjax[metrics]' (or "
                      f"pip install {package})") from None


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
  if not predictions:
    raise ValueError("No predictions to score")
  for i, refs in enumerate(references):
    if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
      raise ValueError(f"example {i}: references must be a non-empty list of strings, got {refs!r:.80}")


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, str]:
  """sacreBLEU's corpus BLEU with its default settings, and its signature.

  Args:
    predictions: One string per example.
    references: Per example, its references (one or more; the counts may differ: sacreBLEU's `nrefs:var`).
  """
  _check(predictions, references)
  metrics = _require("sacrebleu.metrics", "sacrebleu")
  most = max(len(r) for r in references)
  streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(most)]
  scorer = metrics.BLEU()
  return float(scorer.corpus_score(list(predictions), streams).score), str(scorer.get_signature())


ROUGE_SETTINGS = ("rouge-score {version} rougeL F-measure x 100 (default tokenizer: lower-cased, non-alphanumerics "
                  "dropped; no stemming), best reference per example, mean over examples")


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, str]:
  """`rouge-score`'s ROUGE-L F-measure (x 100), mean over examples, and how it was computed."""
  _check(predictions, references)
  rouge_scorer = _require("rouge_score.rouge_scorer", "rouge-score")
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
  scores = [scorer.score_multi(list(refs), prediction)["rougeL"].fmeasure
            for prediction, refs in zip(predictions, references)]
  try:
    version = metadata.version("rouge-score")
  except metadata.PackageNotFoundError:  # On the path without its metadata (a source checkout).
    version = "(version unknown)"
  return 100.0 * sum(scores) / len(scores), ROUGE_SETTINGS.format(version=version)


def generation_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
  """{'metrics': {'bleu', 'rougeL'}, 'settings': {'bleu': sacreBLEU's signature, 'rougeL': its method}}."""
  bleu_score, signature = bleu(predictions, references)
  rouge_score, method = rouge_l(predictions, references)
  return {"metrics": {"bleu": bleu_score, "rougeL": rouge_score}, "settings": {"bleu": signature, "rougeL": method}}

"""gptjax.text_metrics: corpus BLEU is sacreBLEU's (with its signature), ROUGE-L is rouge-score's, on fixed strings."""

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from gptjax import text_metrics

PREDICTIONS = ["the cat sat on the mat", "a quick brown dog jumps", "Return the value of x.", "hello there"]
REFERENCES = [["the cat sat on a mat", "a cat was on the mat"], ["the quick brown fox jumps"],
              ["Return the value of x"], ["hi", "hello world", "hello there"]]  # The best reference last.


def test_bleu_is_sacrebleus_corpus_bleu_with_a_variable_number_of_references():
  score, signature = text_metrics.bleu(PREDICTIONS, REFERENCES)
  streams = [[refs[k] if k < len(refs) else None for refs in REFERENCES] for k in range(3)]
  expected = sacrebleu.corpus_bleu(PREDICTIONS, streams)
  assert score == pytest.approx(expected.score, abs=1e-9) and 10 < score < 90
  assert signature.startswith("nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|version:")
  # One reference each: sacreBLEU's own numbers, and its signature says so.
  single = [refs[:1] for refs in REFERENCES]
  score_1, signature_1 = text_metrics.bleu(PREDICTIONS, single)
  assert score_1 == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [[r[0] for r in single]]).score, abs=1e-9)
  assert signature_1.startswith("nrefs:1|") and score_1 != pytest.approx(score)
  assert text_metrics.bleu(["a b c d e"], [["a b c d e"]])[0] == pytest.approx(100.0)


def test_rouge_l_is_rouge_scores_best_reference_f_measure_averaged():
  score, method = text_metrics.rouge_l(PREDICTIONS, REFERENCES)
  scorer = rouge_scorer.RougeScorer(["rougeL"])
  best = [max(scorer.score(r, p)["rougeL"].fmeasure for r in refs) for p, refs in zip(PREDICTIONS, REFERENCES)]
  assert score == pytest.approx(100 * sum(best) / len(best), abs=1e-9)
  assert "rougeL F-measure" in method and "no stemming" in method
  assert text_metrics.rouge_l(["Return the value of x."], [["return the VALUE of x"]])[0] == pytest.approx(100.0)


@pytest.mark.parametrize("predictions,references,message", [
    (["a", "b"], [["a"]], "2 predictions but 1 reference lists"),
    (["a"], [[]], "example 0: references must be a non-empty list of strings"),
    (["a"], ["a"], "example 0: references must be a non-empty list of strings"),
    ([], [], "No predictions to score")])
def test_bad_input_is_an_error_naming_it(predictions, references, message):
  for metric in (text_metrics.bleu, text_metrics.rouge_l):
    with pytest.raises(ValueError, match=message):
      metric(predictions, references)

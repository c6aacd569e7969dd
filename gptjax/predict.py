r"""Predictions of a fine-tuned model on a data file: `python -m gptjax.predict --model DIR --data FILE`.

DIR is a model folder saved by fine-tuning (`<workdir>/best`, or the workdir itself); FILE is JSONL / CSV / TSV with
the fields the task was trained on, or `tfds:<name>[:<split>]`. Writes one JSON line per example (to --output, else
stdout): `{"label": ..., "probabilities": {...}}`, `{"score": ...}` (regression), `{"choice": i,
"probabilities": [...]}`, or `{"prediction": "..."}` for a generation model (`finetune.task = 'generation'`: the
target generated from the source, greedy unless --num_beams etc. say otherwise). When every example has a label
(a target), the metrics go to stderr as `metrics: {...}` (generation: BLEU and ROUGE-L, `gptjax/text_metrics.py`).

  python -m gptjax.predict --model /tmp/sst2/best --data dev.jsonl --output predictions.jsonl
  python -m gptjax.predict --model /tmp/gen --data test.jsonl --num_beams 4 --no_repeat_ngram_size 3
"""

import json
import sys

import numpy as np
from absl import flags

from gptjax import console
from gptjax import decoding_flags
from gptjax import finetune
from gptjax import seq2seq

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Fine-tuned model folder (or the fine-tuning workdir).", required=True)
flags.DEFINE_string("data", None, "JSONL/CSV/TSV file, or tfds:<name>[:<split>].", required=True)
flags.DEFINE_string("output", None, "Where to write the predictions (JSONL); default stdout.")
flags.DEFINE_integer("batch_size", 32, "Examples per forward pass.")
flags.DEFINE_string("split", "validation", "TFDS split when --data names none.")
flags.DEFINE_integer("max_new_tokens", None, "Generation: most tokens per target (default: the fine-tuning's "
                     "max_new_tokens, at most half the context).")
decoding_flags.define()
_GENERATION_FLAGS = ("max_new_tokens", "num_beams", "length_penalty", "early_stopping", "no_repeat_ngram_size",
                     "min_new_tokens")


def main(argv):
  del argv
  import gptjax  # pylint: disable=g-import-not-at-top
  from gptjax import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.enable()  # Before the first compile: a rerun reads its programs back (gptjax/compilation_cache.py).
  model = gptjax.load(FLAGS.model)  # A fine-tuning workdir loads its best model.
  if model.head is None:
    raise ValueError(f"{FLAGS.model} holds no fine-tuned task head ({finetune.SPEC_FILE}): it is a plain "
                         "language model; fine-tune it first")
  records = finetune.read_records(FLAGS.data, default_split=FLAGS.split)
  spec = model.head.spec
  if spec.kind == seq2seq.TASK:
    return _predict_targets(model, spec, records)
  given = [f"--{name}" for name in _GENERATION_FLAGS if FLAGS[name].present]
  if given:
    raise ValueError(f"only generation models take {', '.join(given)}; {FLAGS.model} was fine-tuned for {spec.task}")
  labelled = all(spec.label_field in record for _, record in records)
  outputs, labels = finetune.predict_outputs(model, records, FLAGS.batch_size, with_labels=labelled)
  out = open(FLAGS.output, "w", encoding="utf-8") if FLAGS.output else sys.stdout  # pylint: disable=consider-using-with
  for row in outputs:
    if spec.kind == "regression":
      result = {"score": float(row[0])}
    else:
      probs = np.exp(row - row.max())
      probs = (probs / probs.sum()).tolist()
      if spec.kind == "choice":
        result = {"choice": int(row.argmax()), "probabilities": probs}
      else:
        result = {"label": spec.labels[int(row.argmax())], "probabilities": dict(zip(spec.labels, probs))}
    out.write(json.dumps(result) + "\n")
  if out is not sys.stdout:
    out.close()
  if labelled:
    metrics = finetune.compute_metrics(spec.kind, finetune.predictions_from_outputs(spec.kind, outputs), labels)
    print("metrics: " + json.dumps(metrics), file=sys.stderr, flush=True)


def _predict_targets(model, spec: seq2seq.GenerationSpec, records) -> None:
  """A generation model's targets, one `{"prediction": ...}` line per record; BLEU and ROUGE-L when all have one."""
  from gptjax import text_metrics  # pylint: disable=g-import-not-at-top
  for where, record in records:
    seq2seq._text_field(record, spec.source_field, where)  # pylint: disable=protected-access
  predictions = seq2seq.generate_targets(model, spec, [r[spec.source_field] for _, r in records],
                                         max_new_tokens=FLAGS.max_new_tokens, batch_size=FLAGS.batch_size,
                                         **decoding_flags.options(sampling=()))
  out = open(FLAGS.output, "w", encoding="utf-8") if FLAGS.output else sys.stdout  # pylint: disable=consider-using-with
  for prediction in predictions:
    out.write(json.dumps({"prediction": prediction}, ensure_ascii=False) + "\n")
  if out is not sys.stdout:
    out.close()
  if all(isinstance(r.get(spec.target_field), str) for _, r in records):
    scores = text_metrics.generation_metrics(predictions, [[r[spec.target_field]] for _, r in records])
    print("metrics: " + json.dumps({**scores["metrics"], "bleu_signature": scores["settings"]["bleu"]}),
          file=sys.stderr, flush=True)


if __name__ == "__main__":
  console.run(main)

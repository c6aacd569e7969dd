r"""Predictions of a fine-tuned model on a data file: `python -m gptjax.predict --model DIR --data FILE`.

DIR is a model folder saved by fine-tuning (`<workdir>/best`, or the workdir itself); FILE is JSONL / CSV / TSV with
the fields the task was trained on, or `tfds:<name>[:<split>]`. Writes one JSON line per example (to --output, else
stdout): `{"label": ..., "probabilities": {...}}`, `{"score": ...}` (regression) or `{"choice": i,
"probabilities": [...]}`. When every example has a label, the metrics go to stderr as `metrics: {...}`.

  python -m gptjax.predict --model /tmp/sst2/best --data dev.jsonl --output predictions.jsonl
"""

import json
import sys

import numpy as np
from absl import flags

from gptjax import console
from gptjax import finetune

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Fine-tuned model folder (or the fine-tuning workdir).", required=True)
flags.DEFINE_string("data", None, "JSONL/CSV/TSV file, or tfds:<name>[:<split>].", required=True)
flags.DEFINE_string("output", None, "Where to write the predictions (JSONL); default stdout.")
flags.DEFINE_integer("batch_size", 32, "Examples per forward pass.")
flags.DEFINE_string("split", "validation", "TFDS split when --data names none.")


def main(argv):
  del argv
  import gptjax  # pylint: disable=g-import-not-at-top
  model = gptjax.load(FLAGS.model)  # A fine-tuning workdir loads its best model.
  if model.head is None:
    raise ValueError(f"{FLAGS.model} holds no fine-tuned task head ({finetune.SPEC_FILE}): it is a plain "
                         "language model; fine-tune it first")
  records = finetune.read_records(FLAGS.data, default_split=FLAGS.split)
  spec = model.head.spec
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


if __name__ == "__main__":
  console.run(main)

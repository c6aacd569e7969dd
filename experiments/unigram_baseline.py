r"""The loss a model scores by knowing token frequencies only: what "clearly learned" is measured against.

Prints the cross-entropy (nats per token) of a config's validation split under the train split's unigram
distribution (add-one smoothed), next to the uniform baseline log(V).

  python experiments/unigram_baseline.py --config configs/quickstart.py
"""

import math

import numpy as np
from absl import app
from gptjax import config_files
from gptjax import data

# `configs/<name>.py` from any folder, or `gptjax:<name>`, like `python -m gptjax.train`.
_CONFIG = config_files.DEFINE_config_file("config", "Training config.")


def main(_):
  d = _CONFIG.value.data
  tokenizer, train, val = data.prepare(d.source, d.tokenizer, cache_dir=d.cache_dir or None,
                                       val_fraction=d.val_fraction, tfds_data_dir=d.tfds_data_dir or None,
                                       download=d.download, builtin_max_bytes=d.builtin_max_bytes, progress=False)
  counts = np.bincount(train.tokens(), minlength=tokenizer.vocab_size).astype(np.float64) + 1.0
  log_probs = np.log(counts / counts.sum())
  val_tokens = np.asarray(val.tokens())
  unigram = -log_probs[val_tokens].mean()
  print(f"{d.source} / {d.tokenizer}: {train.num_tokens:,} train and {val.num_tokens:,} val tokens; "
        f"uniform log(V) = {math.log(tokenizer.vocab_size):.3f}, unigram = {unigram:.3f} nats/token")


if __name__ == "__main__":
  app.run(main)

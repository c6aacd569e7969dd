"""Quickstart: a 1M-parameter GPT-2 trained on the embedded default corpus, offline, on a CPU in under 10 minutes.

Run:  python -m gptjax.train --config configs/quickstart.py --workdir /tmp/quickstart

The corpus is 3 MB of this Python's own standard library (`builtin:python`): nothing is downloaded. A byte-level
BPE of 2,048 tokens is trained on it, then 300 steps of 16 x 128 tokens (614k tokens, ~0.75 of an epoch).

Expected (measured three times on 2026-11-23 on a 2-core cloud VM shared with other jobs, load average 5 to 8;
Python 3.11.7's stdlib): 421, 458 and 433 s wall in all, tokenising and compiling included; 1.0-1.7 s per step.
Every run ended at validation loss 4.956 nats per token (perplexity 142) at step 300, against 6.417 for a model
that knows only token frequencies (the unigram baseline; `python experiments/unigram_baseline.py --config
configs/quickstart.py`) and 7.625 for a uniform guess. The final zero-shot perplexity of the whole validation
text (`config.eval.tasks`) adds about a minute (8:41 wall in all, measured once under the same load): token
perplexity 141.1, 2.29 bits per byte.
The validation text is the alphabetical tail of the stdlib (other modules than the training text), hence
train loss 4.49 < val 4.96. Other Python versions have other stdlibs: expect nearby, not identical, numbers.

Then:  python -c "import gptjax; print(gptjax.load('/tmp/quickstart'))"
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = "builtin:python"  # The interpreter's own standard library: no download, no licence issue.
  config.data.builtin_max_bytes = 3_000_000  # 3 MB of Python: ~0.9M tokens with the tokenizer below.
  config.data.tokenizer = "bpe:2048"  # A byte-level BPE trained on the corpus in seconds.

  config.model.vocab_size = 2048  # = the tokenizer's vocabulary.
  config.model.block_size = 128  # ~420 characters of context (3.3 characters per token).
  config.model.num_layers = 4
  config.model.num_heads = 4  # Head dimension 32.
  config.model.emb_dim = 128
  config.model.mlp_dim = 512
  config.model.dtype = "float32"  # CPUs have no fast bfloat16 matmul.

  config.opt.lr = 3e-3  # Small models take a large learning rate.
  config.opt.warmup_steps = 50
  config.opt.min_lr_ratio = 0.1

  config.train.steps = 300
  config.train.batch_size = 16  # 16 x 128 = 2,048 tokens per step.
  config.train.grad_accum_steps = 1
  config.train.log_every = 25
  config.train.eval_every = 100
  config.eval.batch_size = 16
  config.eval.num_batches = 10  # The same 20k validation tokens at every evaluation.
  config.eval.tasks = "perplexity"  # At the end: perplexity and bits per byte of the whole validation text.
  return config

"""A tiny GPT-2-shaped model for tests and smoke runs: 2 layers, width 32, 64 context, character vocabulary.

Run:  python -m gptjax.train --config configs/tiny.py --workdir /tmp/tiny
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.vocab_size = 256  # Enough rows for a character-level vocabulary.
  config.model.block_size = 64
  config.model.num_layers = 2
  config.model.num_heads = 2
  config.model.emb_dim = 32
  config.model.mlp_dim = 128
  config.model.dtype = "float32"  # Tests compare losses exactly.

  config.data.tokenizer = "char"  # The default corpus has 219 distinct characters: they fit in 256 rows.
  config.train.steps = 100  # A smoke run: seconds on a CPU.
  config.train.batch_size = 16
  config.train.grad_accum_steps = 1
  config.train.log_every = 10
  config.train.eval_every = 50
  config.opt.lr = 3e-3
  config.opt.warmup_steps = 10
  return config

"""GPT-2 small (124,439,808 parameters) trained from scratch on a real web corpus: FineWeb's 10B-token sample.

Run:  pip install 'gptjax[datasets]'  # The hf: source streams through Hugging Face `datasets`.
      gptjax train --config gptjax:gpt2_small --workdir /tmp/gpt2_small  # = python -m gptjax.train --config ...

The recipe is llm.c's GPT-2 (124M) reproduction: FineWeb `sample-10BT`, batch 512 x 1024 tokens (0.5M), lr 6e-4
with 700 warmup steps and a cosine to 0, weight decay 0.1, 19,073 steps = one pass over 10B tokens. llm.c reports
matching GPT-2's HellaSwag accuracy that way in about 90 minutes on 8 x A100 80GB (its discussion #481). Not run here: it needs a multi-GPU or TPU
machine, and the first run streams ~30 GB and tokenises 10B tokens in one pass on every core (hours, once; the
token files are cached afterwards).

FineWeb has no validation split: its first 0.1% of documents are held out (gptjax/data.py explains why the head).
For FineWeb-Edu (the same sample size, filtered for educational text) set
  --config.data.source=hf:HuggingFaceFW/fineweb-edu/sample-10BT
and for OpenWebText (GPT-2's WebText recreation, nanoGPT's choice) --config.data.source=hf:Skylion007/openwebtext.

Memory: grad_accum_steps=8 makes microbatches of 64 sequences; raise it if a device runs out of memory, lower it
on big meshes (the microbatch must stay divisible by mesh.data * mesh.fsdp).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = "hf:HuggingFaceFW/fineweb/sample-10BT"  # Streamed: owner/name/config (gptjax/data.py).
  config.data.tokenizer = "gpt2"  # GPT-2's BPE (fetched once from the Hugging Face Hub).
  config.data.val_fraction = 0.001  # FineWeb has no validation split: hold out ~10M tokens (its first 0.1%).

  with_size(config, "small")

  config.opt.lr = 6e-4
  config.opt.warmup_steps = 700
  config.opt.min_lr_ratio = 0.0  # llm.c decays to 0.

  config.train.steps = 19_073  # 19,073 x 524,288 tokens = 10B tokens.
  config.train.batch_size = 512
  config.train.grad_accum_steps = 8
  config.train.eval_every = 250
  config.eval.batch_size = 64
  config.eval.num_batches = 20  # 1.3M validation tokens per evaluation.
  return config


def with_size(config, size: str):
  """Sets `config.model` to one of GPT-2's four shapes (paper, Table 2), taken from `gptjax.model.gpt2_config`."""
  from gptjax import model  # pylint: disable=g-import-not-at-top
  shape = model.gpt2_config(size)
  for field in ("num_layers", "num_heads", "emb_dim", "mlp_dim", "vocab_size", "block_size"):
    config.model[field] = getattr(shape, field)
  return config

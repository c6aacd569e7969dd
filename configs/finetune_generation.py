"""Conditional fine-tuning, source -> target (`finetune.task = 'generation'`, gptjax/train/seq2seq.py).

It is `configs/default.py` plus a `finetune` section: the same loop and schema as pre-training and GPT-1 task
fine-tuning. Examples are JSONL lines `{"source": ..., "target": ...}` (or CSV/TSV/TFDS with those fields), laid
out by `finetune.template`; the loss is on the target tokens (and the end marker) only. The validation loss picks
the best model, exported to <workdir>/best.

Run:  python -m gptjax.train --config configs/finetune_generation.py --workdir /tmp/gen \
        --config.finetune.train_data=train.jsonl --config.finetune.val_data=val.jsonl
      python -m gptjax.predict --model /tmp/gen --data test.jsonl
      python -m gptjax.evaluate --model /tmp/gen --task generation --data test.jsonl --num_beams 4
`experiments/style_transfer.py` is a measured run (Python functions -> their docstrings' first lines).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  # The pre-trained model: a Hugging Face folder or hub name ('gpt2', 'openai-gpt') or a gptjax run folder.
  config.init_from = "gpt2"
  config.seed = 0  # New embedding rows (the template's markers), dropout and the per-epoch shuffle.

  # Runtime fields of the model (the architecture and weights come from init_from).
  config.model.dropout_rate = 0.1  # Residual and embedding dropout while fine-tuning.
  config.model.attention_dropout_rate = 0.1
  config.model.dtype = "float32"  # Compute dtype of matmuls ('bfloat16' on accelerators); the loss stays float32.

  config.finetune = ml_collections.ConfigDict()
  config.finetune.task = "generation"
  # .jsonl/.json/.csv/.tsv with the two fields below, or tfds:<name>[/<config>][:<split>].
  config.finetune.train_data = "train.jsonl"
  config.finetune.val_data = "val.jsonl"  # The validation loss on it picks <workdir>/best.
  config.finetune.tfds_data_dir = ""  # TFDS data_dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.finetune.download = True  # Let TFDS download and prepare a dataset that is not there yet.
  config.finetune.source_field = "source"
  config.finetune.target_field = "target"
  # One {source}, then one {target}, then an end marker; <|name|> markers are single tokens, added to the
  # tokenizer when it lacks them (gptjax/seq2seq.py). GPT-2's own style: "{source}\nTL;DR: {target}<|endoftext|>".
  config.finetune.template = "{source}<|delimiter|>{target}<|endoftext|>"
  config.finetune.max_length = 0  # Longest example in tokens; 0 = the model's context. Longer: the source's end is cut.
  config.finetune.truncate = True  # False: an over-long example is an error naming its line.
  config.finetune.max_new_tokens = 64  # Prediction's default limit on a target's tokens (lm.predict, gptjax.predict).
  config.finetune.tokenizer = ""  # The tokenizer's folder or name; '' = the one saved with init_from.

  config.opt.lr = 6.25e-5  # GPT-1's fine-tuning rate.
  config.opt.warmup_steps = 10
  config.opt.min_lr_ratio = 0.0
  config.opt.weight_decay = 0.01
  config.opt.b2 = 0.999

  config.train.steps = 1_000  # Set from the data: epochs x (examples // batch_size).
  config.train.batch_size = 32
  config.train.grad_accum_steps = 1
  config.train.eval_every = 0  # Once per epoch.
  config.train.log_every = 50
  config.eval.batch_size = 32
  config.checkpoint.max_to_keep = 1  # The latest step to resume from; keep_best keeps the best one too.
  return config

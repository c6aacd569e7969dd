"""GPT-1 fine-tuning on SST-2 (GLUE sentiment, 2 classes): the base every finetune_* config starts from.

It is `configs/default.py` plus a `finetune` section: the same loop and schema as pre-training (gptjax/train/), so
the `opt`, `train`, `eval`, `checkpoint` and `mesh` fields mean what they mean there, and fine-tuning shards over
the mesh and accumulates gradients like pre-training. The recipe is the GPT-1 paper's (section 4.1): lr 6.25e-5,
batch 32, 3 epochs, warmup over 0.2% of training, then decay; classifier dropout 0.1; lambda (lm_coef) 0.5. The
paper's linear decay is replaced by gptjax.optim's cosine decay to 0 (min_lr_ratio 0).

Run:  python -m gptjax.train --config configs/finetune_sst2.py --workdir /tmp/sst2
      python -m gptjax.predict --model /tmp/sst2/best --data dev.jsonl
(The paper reports 91.3% SST-2 accuracy for GPT-1; not reproduced here: no GPU or hub access on the build machine.)
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  # The pre-trained model: a Hugging Face folder or hub name ('openai-gpt', 'gpt2') or a gptjax run folder.
  # Its tokenizer must be saved beside it; the task tokens are added to it and the embedding grows to match.
  config.init_from = "openai-gpt"
  config.seed = 0  # Head init, new embedding rows, dropout and the per-epoch shuffle.

  # Runtime fields of the model (the architecture and weights come from init_from; see checkpoint.initial_weights).
  config.model.dropout_rate = 0.1  # Residual and embedding dropout while fine-tuning (GPT-1: 0.1).
  config.model.attention_dropout_rate = 0.1  # Dropout on attention probabilities.
  config.model.dtype = "float32"  # Compute dtype of matmuls ('bfloat16' on accelerators); the losses stay float32.

  config.finetune = ml_collections.ConfigDict()
  # 'classification' | 'entailment' | 'similarity' | 'multiple_choice' (GPT-1 Figure 1; see gptjax/finetune.py).
  config.finetune.task = "classification"
  # Data: a .jsonl/.json/.csv/.tsv file with named fields, or tfds:<name>[/<config>][:<split>]. (config.data is
  # pre-training's corpus and is not read.)
  config.finetune.train_data = "tfds:glue/sst2:train"
  config.finetune.val_data = "tfds:glue/sst2:validation"  # Model selection and early stopping use this split.
  config.finetune.tfds_data_dir = ""  # TFDS data_dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.finetune.download = True  # Let TFDS download and prepare a dataset that is not there yet.
  # classification: (text,); entailment: (premise, hypothesis); similarity: (a, b); multiple_choice: context
  # field(s), joined with a space.
  config.finetune.text_fields = ("sentence",)
  config.finetune.choice_fields = ()  # multiple_choice: one field per answer, or one list-valued field.
  config.finetune.label_field = "label"  # multiple_choice: the 0-based index of the right answer.
  # The label set, in head-output order; () = the sorted distinct labels of the training data. TFDS ClassLabel
  # indices are read as their names.
  config.finetune.labels = ("negative", "positive")
  config.finetune.regression = False  # One real-valued output with squared error (STS-B); metrics Pearson/Spearman.
  config.finetune.max_length = 0  # Longest input in tokens, task tokens included; 0 = the model's context.
  config.finetune.truncate = True  # Shorten over-long text (the answer never); False: over-long input is an error.
  config.finetune.lm_coef = 0.5  # lambda: weight of the auxiliary language-modelling loss; 0 turns it off.
  config.finetune.clf_dropout = 0.1  # Dropout on the head's input.
  config.finetune.tokenizer = ""  # The tokenizer's folder or name; '' = the one saved with init_from.
  # Validation metric for the best model (<workdir>/best) and early stopping ('' = accuracy, or pearson for
  # regression); one of accuracy, f1, mcc (two classes) or pearson, spearman (regression).
  config.finetune.metric = ""

  config.opt.lr = 6.25e-5  # Peak learning rate.
  config.opt.warmup_steps = 13  # 0.2% of the 6,312 steps.
  config.opt.decay_steps = 0  # The cosine ends at the last step.
  config.opt.min_lr_ratio = 0.0  # Decay to 0 at the last step.
  config.opt.weight_decay = 0.01  # AdamW decay on matrices and embeddings (not biases or LayerNorm).
  config.opt.b2 = 0.999  # Adam second-moment decay (GPT-1 used Adam's default).

  # 3 epochs of SST-2's 67,349 training examples at batch 32: 2,104 steps per epoch (the last partial batch of
  # each epoch is dropped), 6,312 in all.
  config.train.steps = 6_312
  config.train.batch_size = 32  # Examples per step (a similarity or multiple-choice example is 2 or N sequences).
  config.train.grad_accum_steps = 1
  config.train.eval_every = 0  # Once per epoch; each evaluation may save the best model to <workdir>/best.
  config.train.log_every = 50

  config.eval.batch_size = 64  # Examples per validation forward pass (the whole split is evaluated).
  config.checkpoint.max_to_keep = 1  # The latest step to resume from; keep_best keeps the best one too.
  return config

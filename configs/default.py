"""The base config every other config starts from: GPT-2 small's shape and GPT-2's optimiser recipe.

Every field is commented. This is the one schema of every run (gptjax/train/schema.py checks each field before
anything runs): pre-training reads `data`; GPT-1 fine-tuning adds a `finetune` section (configs/finetune_sst2.py)
and reads its examples from there; distillation names a `distill.teacher` (configs/distill.py); all use the same
`model`, `opt`, `train`, `eval`, `checkpoint` and `mesh`. Variants import this module and override only what
changes:

    from configs import default
    def get_config():
      config = default.get_config()
      config.model.num_layers = 4
      return config

Run:  python -m gptjax.train --config configs/default.py --workdir /tmp/gpt2 [--config.train.steps=100 ...]

As it stands it trains a 124M-parameter GPT-2 on the embedded default corpus with GPT-2's tokenizer (fetched from
the Hugging Face Hub once): a template, not a recipe. `configs/gpt2_small.py` is the real-corpus run,
`configs/quickstart.py` the one that finishes on a laptop CPU.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # The network: fields of gptjax.model.ModelConfig, one for one (a misspelt key is an error that names it).
  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 50257  # Embedding rows; >= the tokenizer's vocabulary (GPT-2 BPE: 50257).
  config.model.block_size = 1024  # Context length: rows of the position embedding.
  config.model.num_layers = 12  # Transformer blocks.
  config.model.num_heads = 12  # Attention heads; must divide emb_dim.
  config.model.emb_dim = 768  # Model width.
  config.model.mlp_dim = 3072  # MLP hidden width (4 * emb_dim in both papers).
  config.model.dropout_rate = 0.0  # Embedding/residual dropout (GPT-2 used 0.1; none is better for short runs).
  config.model.attention_dropout_rate = 0.0  # Dropout on attention probabilities.
  config.model.layer_norm_epsilon = 1e-5  # LayerNorm epsilon.
  config.model.norm = "pre"  # 'pre' = GPT-2 (LayerNorm before each sub-block), 'post' = GPT-1.
  config.model.final_norm = True  # GPT-2 has a final LayerNorm (ln_f); GPT-1 does not.
  config.model.tie_embeddings = True  # Output projection = transposed token embedding (both papers).
  config.model.activation = "gelu_new"  # tanh-approximated GELU, as both papers.
  config.model.scale_residual_init = True  # GPT-2: residual projections init std 0.02 / sqrt(2 * num_layers).
  config.model.init_std = 0.02  # N(0, 0.02) initialisation (both papers).
  config.model.dtype = "bfloat16"  # Compute dtype of matmuls; softmax, LayerNorm and the loss stay float32.
  config.model.param_dtype = "float32"  # Parameters (and optimizer state) are kept in float32.
  config.model.attention_impl = None  # jax.nn.dot_product_attention implementation: None (auto), 'xla', 'cudnn'.
  config.model.remat = False  # Recompute block activations in the backward pass to save memory.
  config.model.decode = False  # Decoding mode (the sampler sets it; leave False for training).

  # Where the weights come from: 'scratch' (random init from `model`), a gptjax run folder (fine-tune what it
  # trained), or a Hugging Face folder / hub name such as 'gpt2' (its architecture replaces `model`, except the
  # dropout, dtype, attention_impl and remat fields). A workdir that already has checkpoints resumes instead.
  config.init_from = "scratch"
  config.seed = 0  # Seeds the init and dropout, and (with the step) picks every batch: same seed, same run.

  # The corpus (gptjax/data.py): tokenised once into a cached token file per split.
  config.data = ml_collections.ConfigDict()
  config.data.source = "builtin:python"  # 'builtin:python' (offline), 'text:<glob>', 'tfds:<name>', 'hf:<owner>/<name>'
  config.data.tokenizer = "gpt2"  # 'char', 'bpe:<vocab size>' (trained on the corpus), or a tokenizer name / folder.
  config.data.val_fraction = 0.1  # Share held out for validation when the source has no validation split.
  config.data.cache_dir = ""  # Token files; '' = ~/.cache/gptjax/tokens.
  config.data.tfds_data_dir = ""  # TFDS data_dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.data.download = True  # Let TFDS download and prepare a dataset that is not there yet.
  config.data.builtin_max_bytes = 10_000_000  # Cap on the bytes of Python source `builtin:python` reads.

  # Knowledge distillation (gptjax/train/distill.py; configs/distill.py): a `teacher` turns the run into one. The
  # student trains on `data` with the teacher's tokenizer (`data.tokenizer` '' = the teacher's) and the loss
  # alpha_kd * T^2 * KL(teacher_T || student_T) + alpha_lm * CE + alpha_cos * (1 - cos of the final hidden states).
  config.distill = ml_collections.ConfigDict()
  config.distill.teacher = ""  # A gptjax run folder, a Hugging Face folder or a hub name ('gpt2'); '' = off.
  # Teacher blocks the student starts from, in increasing order, with the embeddings and the final LayerNorm
  # (DistilGPT2: (0, 2, 4, 7, 9, 11) of GPT-2's 12); () = a student from scratch shaped by `student` below.
  config.distill.student_layers = ()
  config.distill.student = ml_collections.ConfigDict()  # From scratch: the teacher's shape with these; 0 = its own.
  config.distill.student.num_layers = 0
  config.distill.student.num_heads = 0
  config.distill.student.emb_dim = 0
  config.distill.student.mlp_dim = 0  # 0 with a new emb_dim = 4 * emb_dim.
  config.distill.temperature = 2.0  # T: both distributions softened by logits / T.
  config.distill.alpha_kd = 0.5  # Weight of the (T^2-scaled) KL term.
  config.distill.alpha_lm = 0.5  # Weight of the next-token cross-entropy on the data.
  config.distill.alpha_cos = 0.0  # Weight of 1 - cos(student, teacher) of the final hidden states (same width).
  config.distill.reverse_kl = False  # True: KL(student || teacher), the mode-seeking direction (MiniLLM).

  # The optimiser (gptjax/optim.py): AdamW, linear warmup then cosine decay to lr * min_lr_ratio.
  config.opt = ml_collections.ConfigDict()
  config.opt.lr = 6e-4  # Peak learning rate (GPT-3 paper, 125M row).
  config.opt.warmup_steps = 700  # Linear warmup from 0 (llm.c's GPT-2 124M run).
  config.opt.decay_steps = 0  # Step at which the cosine reaches its floor; 0 = config.train.steps.
  config.opt.min_lr_ratio = 0.1  # The floor, as a fraction of lr.
  config.opt.weight_decay = 0.1  # Decoupled decay, on matrices and embeddings only (not biases or LayerNorm).
  config.opt.b1 = 0.9  # Adam first-moment decay.
  config.opt.b2 = 0.95  # Adam second-moment decay (0.95, not 0.999: steadier at large batch, GPT-3).
  config.opt.eps = 1e-8  # Adam epsilon.
  config.opt.grad_clip_norm = 1.0  # Clip the global gradient norm to this; 0 = no clipping.

  # The loop (gptjax/train/loop.py). Lengths are in optimiser steps for every kind of run; a fine-tuning config
  # states the epochs behind its count.
  config.train = ml_collections.ConfigDict()
  config.train.steps = 19_073  # Optimiser updates: 19,073 x 524,288 tokens = 10B tokens (llm.c's GPT-2 run).
  config.train.batch_size = 512  # Sequences per update, over all devices and microbatches (512 x 1024 = 0.5M tokens).
  config.train.grad_accum_steps = 8  # Microbatches per update (same update as the big batch, less memory).
  config.train.seq_len = 0  # Tokens per training window; 0 = model.block_size.
  config.train.log_every = 10  # Steps between console / metrics.jsonl / TensorBoard lines.
  config.train.eval_every = 250  # Steps between validations (and, by default, checkpoints); 0 = once per epoch.
  config.train.tensorboard = True  # Write TensorBoard events to <workdir>/tensorboard.
  config.train.peak_flops_per_device = 0.0  # Peak FLOP/s for MFU; 0 = look the device up (none for CPUs).
  # (first, last): a jax.profiler trace of updates first..last (1-based) into <workdir>/tensorboard; () = off.
  config.train.profile_steps = ()

  # Validation.
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 0  # Sequences per validation batch; 0 = the training microbatch.
  config.eval.num_batches = 20  # Validation batches per evaluation (the same windows every time); 0 = whole split.
  # Stop after this many evaluations without improvement (of val_loss; fine-tuning: of finetune.metric); 0 = never.
  # The count lives in the checkpoint: a resumed run continues it, and a stopped run stays stopped.
  config.eval.early_stop_patience = 0
  config.eval.early_stop_min_delta = 0.0  # Improvement smaller than this does not count.
  # Zero-shot tasks run on the final checkpoint (gptjax/evaluate.py), written to <workdir>/eval_results.json:
  # 'task' or 'task=data' entries separated by ';', e.g. "perplexity; multiple_choice=hellaswag.jsonl".
  # A bare 'perplexity' scores this run's own validation documents. '' = none.
  config.eval.tasks = ""
  config.eval.tasks_max_examples = 0  # Evaluate only the first N documents / examples of each task; 0 = all.

  # The device mesh (gptjax/sharding.py): data x fsdp x tensor must equal the number of devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # Data-parallel ways; -1 = all devices the other axes leave.
  config.mesh.fsdp = 1  # Fully-sharded data-parallel ways (parameters and optimiser state split too).
  config.mesh.tensor = 1  # Tensor-parallel ways (heads, MLP width and vocabulary split).
  # CPU only: split the host's cores into this many XLA devices, so data parallelism uses them (faster than one
  # device's threads for small models: experiments/bench_train.py); 0 = as many as there are cores and divide the
  # batch, 1 = one device. Ignored when XLA_FLAGS or JAX_NUM_CPU_DEVICES says, or JAX has already started.
  config.mesh.cpu_devices = 0

  # Checkpoints (gptjax/checkpoint.py) in <workdir>/checkpoints; a restarted run resumes from the latest, and
  # SIGTERM / Ctrl-C saves the step just finished before exiting.
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 0  # Steps between saves; 0 = train.eval_every. The last step is always saved.
  config.checkpoint.max_to_keep = 3  # Newest checkpoints kept on disk.
  config.checkpoint.keep_best = True  # Also keep the one with the lowest validation loss.
  config.checkpoint.async_save = True  # Write in the background while training continues.
  # A resume that would change the architecture, tokenizer, data source or corpus is an error naming each field;
  # True turns it into a warning and goes on with the new settings.
  config.checkpoint.allow_resume_changes = False

  return config

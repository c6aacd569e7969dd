"""The base config every other config starts from: GPT-2 small trained on the embedded default corpus.

Every field is commented. Variants import this module and override only what changes:

    from configs import default
    def get_config():
      config = default.get_config()
      config.model.num_layers = 4
      return config

Run:  python -m gptjax.train --config configs/default.py --workdir /tmp/gpt2 [--config.train.steps=100 ...]
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

  return config

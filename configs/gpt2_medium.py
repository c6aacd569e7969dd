"""GPT-2 medium (354,823,168 parameters): 24 layers, 16 heads, width 1024, 1024 context, 50257-token BPE.

Run:  python -m gptjax.train --config configs/gpt2_medium.py --workdir /tmp/gpt2_medium
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.num_layers = 24  # GPT-2 paper, Table 2.
  config.model.num_heads = 16  # Head dimension 64.
  config.model.emb_dim = 1024
  config.model.mlp_dim = 4 * 1024
  return config

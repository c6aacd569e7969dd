"""Hugging Face PyTorch models as the independent reference: random weights in every tensor, logits by PyTorch."""

import numpy as np
import torch
import transformers


def random_hf_model(arch: str, vocab: int, context: int, layers: int, heads: int, width: int, seed: int = 0):
  """A `GPT2LMHeadModel` ('gpt2') or `OpenAIGPTLMHeadModel` ('openai-gpt') with every parameter random.

  HF's init leaves LayerNorms at (1, 0) and biases at 0, where a wrongly mapped or dropped tensor is invisible: here
  LayerNorm scales are 1 + N(0, 0.3), biases and LayerNorm offsets N(0, 0.3), matrices N(0, 0.1).
  """
  torch.manual_seed(seed)
  if arch == "gpt2":
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=context, n_layer=layers, n_head=heads,
                                     n_embd=width)
    model = transformers.GPT2LMHeadModel(config)
  else:
    config = transformers.OpenAIGPTConfig(vocab_size=vocab, n_positions=context, n_layer=layers, n_head=heads,
                                          n_embd=width)
    model = transformers.OpenAIGPTLMHeadModel(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * (0.3 if "ln" in name or "bias" in name else 0.1) + (1.0 if
              name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0))
  return model.eval()


def torch_logits(model, ids) -> np.ndarray:
  """PyTorch's logits [B, T, V] for int ids [B, T]."""
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()

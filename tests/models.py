"""Tiny random-weight models from transformers configs: architecture coverage with no download."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GemmaConfig, Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config

VOCAB = 320  # covers tests/_tiny_tokenizer.py's 259 ids

_COMMON = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=192, num_hidden_layers=4, max_position_embeddings=2048, tie_word_embeddings=False)

# name -> (config class, extra settings). GQA everywhere (H_kv < H_q); head_dim 64 and 128 both covered.
ARCHS = {
    "llama": (LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=64)),
    "llama-hd128": (LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=1, head_dim=128)),
    "qwen2": (Qwen2Config, dict(num_attention_heads=4, num_key_value_heads=2)),  # head_dim 32 from hidden/heads
    "qwen3": (Qwen3Config, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=64)),
    "mistral": (MistralConfig, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=64, sliding_window=None)),
    "phi3": (Phi3Config, dict(num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)),  # head_dim 64
    "gemma": (GemmaConfig, dict(num_attention_heads=2, num_key_value_heads=1, head_dim=128)),
}
# Sliding-window and global layers mixed, as Gemma 3 has them (5:1 there, 2:1 here): a window of 8 that a
# 20-token prompt already exceeds, query_pre_attn_scalar (48) other than head_dim (64), different rope
# bases for local and global layers, and final-logit soft-capping. Not in ARCHS: by default only its
# global layers are hashed (HataConfig.hash_sliding), so the per-architecture counts there do not apply.
MIXED = {
    "gemma3": (
        Gemma3TextConfig,
        dict(num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=48, sliding_window=8,
             layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2, final_logit_softcapping=30.0),
    ),
}
UNSUPPORTED = {"gemma2-softcap": (Gemma2Config, dict(num_attention_heads=2, num_key_value_heads=1, head_dim=64, attn_logit_softcapping=50.0))}


def tiny_model(name: str, seed: int = 0, **overrides):
    cls, extra = {**ARCHS, **MIXED, **UNSUPPORTED}[name]
    cfg = cls(**{**_COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    # Peakier logits than the default init, so greedy comparisons are not decided by rounding noise.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


def save_tiny(name: str, folder: Path, tokenizer=None, **overrides) -> Path:
    model = tiny_model(name, **overrides)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder

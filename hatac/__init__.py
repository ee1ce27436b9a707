"""hatac: compile Hugging Face causal language models to hash-aware top-k attention (HATA)."""

__version__ = "0.1.0"

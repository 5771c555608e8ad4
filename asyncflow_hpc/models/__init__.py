"""Hugging Face-format causal LMs (Qwen2, Llama) from local directories, and the tiny embedded model."""

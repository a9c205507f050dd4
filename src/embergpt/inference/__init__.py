"""Inference: a static KV cache and the generation engine (prefill, decode, streaming, batches)."""

from embergpt.inference.kv_cache import KVCache

__all__ = ["KVCache"]

"""Inference: a static KV cache and the generation engine (prefill, decode, streaming, batches)."""

from embergpt.inference.engine import Engine
from embergpt.inference.kv_cache import KVCache
from embergpt.inference.streaming import TextStreamer

__all__ = ["Engine", "KVCache", "TextStreamer"]

"""Moving models between embergpt and other tools: Hugging Face `transformers` directories (`hf`)."""

from embergpt.interop.hf import InteropError, export_hf, import_hf

__all__ = ["InteropError", "export_hf", "import_hf"]

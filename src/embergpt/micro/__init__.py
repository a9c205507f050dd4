"""embergpt.micro: the whole GPT algorithm once more, in pure Python (standard library only).

Read it in this order:

1. `engine.py`     -- `Value`, a scalar that remembers how it was computed, and `backward()` (backpropagation)
2. `tokenizer.py`  -- documents (one name per line) and characters <-> token ids, with a BOS token
3. `model.py`      -- the transformer, one token at a time with a KV cache: embeddings, RMSNorm, attention, MLP
4. `optim.py`      -- Adam
5. `train.py`      -- the training loop: one name per step
6. `sampling.py`   -- drawing new names with a temperature

No torch and no numpy: every number is a Python float inside a `Value`.
"""

from embergpt.micro.engine import Value, dot, linear, sum_values
from embergpt.micro.model import (
    MicroConfig,
    cross_entropy,
    empty_kv_cache,
    forward,
    init_params,
    parameters,
    rmsnorm,
    softmax,
)
from embergpt.micro.optim import Adam
from embergpt.micro.sampling import sample_name, sample_names
from embergpt.micro.tokenizer import CharTokenizer, docs_from_text
from embergpt.micro.train import MicroRun, MicroSettings, document_loss, train_and_sample

__all__ = [
    "Adam",
    "CharTokenizer",
    "MicroConfig",
    "MicroRun",
    "MicroSettings",
    "Value",
    "cross_entropy",
    "docs_from_text",
    "document_loss",
    "dot",
    "empty_kv_cache",
    "forward",
    "init_params",
    "linear",
    "parameters",
    "rmsnorm",
    "sample_name",
    "sample_names",
    "softmax",
    "sum_values",
    "train_and_sample",
]

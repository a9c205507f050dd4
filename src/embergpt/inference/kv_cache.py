"""A static, preallocated KV cache.

Allocated once for (batch, max_len) and written in place, so shapes never change between decode steps: that is
what makes a compiled decode step and CUDA graphs possible. Positions are kept per row as a tensor, so rows of
different lengths (a batch of different prompts, or continuous batching in the server) share one cache.
"""

from __future__ import annotations

import torch

from embergpt.config import GPTConfig


class KVCache:
    """Per layer k and v buffers of shape [B, n_kv_head, max_len + 1, head_dim] in the compute dtype (one spare).

    `pos[b]` is the number of tokens already cached for row b; the next token of row b goes to index pos[b].
    `max_pos` is a host-side upper bound of pos, used to refuse overflows without a device sync.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        # one spare position past max_len, never written or attended: a window then never spans a whole buffer
        # dimension, and a dynamic-shape compiled step keeps one graph for every window (a slice that is the
        # whole dimension made dynamo compile a second graph for the last window: 2 of the 4 graphs of warm-up)
        shape = (n_layer, batch_size, n_kv_head, max_len + 1, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        if self.k.device.type == "cuda":
            # CUDA graphs (torch.compile's "reduce-overhead") replay only if every input a step mutates has a
            # fixed address; unmarked, they are skipped for "mutated inputs" and each step launches its kernels
            for t in (self.k, self.v, self.pos):
                torch._dynamo.mark_static_address(t)
        self.max_len = max_len
        self.max_pos = 0
        # index tensors of SlotView.update, made once
        self.layer_ids = list(torch.arange(n_layer, device=device))
        self.heads = torch.arange(n_kv_head, device=device)

    @classmethod
    def for_model(
        cls,
        config: GPTConfig,
        batch_size: int,
        max_len: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        """A cache sized for `config`; max_len defaults to (and may not exceed) config.sequence_len."""
        max_len = config.sequence_len if max_len is None else max_len
        if not 0 < max_len <= config.sequence_len:
            raise ValueError(
                f"KV cache length {max_len} must be in 1..sequence_len={config.sequence_len} (the model's RoPE table)"
            )
        return cls(config.n_layer, batch_size, config.n_kv_head, max_len, config.head_dim, dtype, device)

    @staticmethod
    def bytes_for(config: GPTConfig, batch_size: int, max_len: int, dtype: torch.dtype) -> int:
        """The bytes of k and v a cache of `batch_size` rows x `max_len` positions holds (with its spare position),
        known before allocating it."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * config.n_layer * batch_size * config.n_kv_head * (max_len + 1) * config.head_dim * itemsize

    @property
    def batch_size(self) -> int:
        return self.pos.size(0)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def check_capacity(self, n_new: int) -> None:
        if self.max_pos + n_new > self.max_len:
            raise ValueError(
                f"KV cache full: {self.max_pos} cached + {n_new} new tokens exceed max_len={self.max_len}; "
                "use a shorter prompt or fewer new tokens"
            )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, Hkv, T, D] at positions pos[b] .. pos[b] + T - 1; return the layer's whole buffers."""
        B, H, T, D = k.shape
        if T == 1:  # decode: one scatter per row via advanced indexing, cheaper than a general scatter
            rows = torch.arange(B, device=k.device)
            self.k[layer, rows, :, self.pos] = k[:, :, 0].to(self.k.dtype)
            self.v[layer, rows, :, self.pos] = v[:, :, 0].to(self.v.dtype)
        else:
            index = (self.pos[:, None] + torch.arange(T, device=k.device))[:, None, :, None].expand(B, H, T, D)
            self.k[layer].scatter_(2, index, k.to(self.k.dtype))
            self.v[layer].scatter_(2, index, v.to(self.v.dtype))
        return self.k[layer, :, :, : self.max_len], self.v[layer, :, :, : self.max_len]

    def advance(self, n: int) -> None:
        self.pos += n
        self.max_pos += n

    def set_positions(self, pos: torch.Tensor | list[int]) -> None:
        """Set each row's cached length (after a right-padded prefill of prompts of different lengths)."""
        pos = torch.as_tensor(pos, dtype=torch.long, device=self.pos.device)
        self.pos.copy_(pos)
        self.max_pos = int(pos.max()) if pos.numel() else 0

    def reset(self) -> None:
        self.pos.zero_()
        self.max_pos = 0

    def copy_row_(self, dst_row: int, src: KVCache, src_row: int = 0) -> None:
        """Copy row `src_row` of another cache (e.g. a single-prompt prefill) into row `dst_row` of this one."""
        n = int(src.pos[src_row])
        if n > self.max_len:
            raise ValueError(f"cannot copy {n} cached tokens into a cache of max_len={self.max_len}")
        self.k[:, dst_row, :, :n] = src.k[:, src_row, :, :n]
        self.v[:, dst_row, :, :n] = src.v[:, src_row, :, :n]
        self.pos[dst_row] = n
        self.max_pos = max(self.max_pos, n)


class SlotView:
    """Rows [start, start + n) of a KVCache and its first `window` positions: what one forward reads and writes.

    The one cache view of the decode core. It holds only tensors and two ints, so a compiled step can take it as
    an input: writes go into the base cache's buffers with one index_put_ / scatter_ per layer (a compiler can do
    them in place; writing through a sliced view made inductor copy the whole buffer at every step), and the
    layer's keys and values are returned as a view of the first `window` positions, so attention time grows with
    the longest row, not with the cache size. Host-side bookkeeping (capacity checks) is the caller's: the view's
    check_capacity is a no-op, and positions advance on the device only.
    """

    def __init__(self, cache: KVCache, start: int, n: int, window: int) -> None:
        if not (start >= 0 and n >= 1 and start + n <= cache.batch_size and 1 <= window <= cache.max_len):
            raise ValueError(f"rows {start}..{start + n} / window {window} do not fit a cache of "
                             f"{cache.batch_size} rows x {cache.max_len} positions")
        self.k, self.v = cache.k, cache.v
        self.pos = cache.pos[start : start + n]
        if self.pos.device.type == "cuda":  # a step advances it in place: a static address, as in KVCache
            torch._dynamo.mark_static_address(self.pos)
        self.start = start
        device = cache.pos.device
        # the window as a (zero-byte) tensor's length: a compiler can mark it dynamic while the rows stay static
        # (max-autotune on CPU: one graph per row count for every window, see inference/compile.py)
        self.span = torch.empty(window, 0, device=device)
        self.rows = torch.arange(start, start + n, device=device)
        self.layer_ids = cache.layer_ids
        self.heads = cache.heads

    @property
    def window(self) -> int:
        """Cache positions a forward through this view attends over (the length of `span`)."""
        return self.span.size(0)

    def check_capacity(self, n_new: int) -> None:
        pass  # checked by the caller on host-side positions (no device sync)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [n, Hkv, T, D] at each row's position; return the layer's [n, Hkv, window, D] keys/values."""
        T = k.size(2)
        if T == 1:  # decode: [n, H] indices into the whole 5-D buffer
            index = (self.layer_ids[layer], self.rows[:, None], self.heads[None, :], self.pos[:, None])
            self.k.index_put_(index, k[:, :, 0].to(self.k.dtype))
            self.v.index_put_(index, v[:, :, 0].to(self.v.dtype))
        else:  # prefill: T consecutive positions per row
            n, H, _, D = k.shape
            rows = slice(self.start, self.start + n)
            index = (self.pos[:, None] + torch.arange(T, device=k.device))[:, None, :, None].expand(n, H, T, D)
            self.k[layer, rows].scatter_(2, index, k.to(self.k.dtype))
            self.v[layer, rows].scatter_(2, index, v.to(self.v.dtype))
        rows = slice(self.start, self.start + self.rows.size(0))
        return self.k[layer, rows, :, : self.window], self.v[layer, rows, :, : self.window]

    def advance(self, n: int) -> None:
        self.pos += n

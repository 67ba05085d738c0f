"""Int8Embedding and Int4Embedding: drop-in replacements of nn.Embedding with row-wise int8 / int4
tables (compressops/formats/embedding.py). They belong to the int8 and int4 families (registered
with Int8Linear and Int4Linear: a config with embeddings=True converts them)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..configs import Int4, Int8
from ..formats import embedding as fe
from ..formats import int4 as int4_format
from .compressed_linear import CompressedLinear, on_meta

__all__ = ["Int8Embedding", "Int4Embedding"]


def check_float_embedding(cls, mod: nn.Module, label: str) -> None:
    """Raise unless `mod` is an nn.Embedding whose forward only reads its weight."""
    if not isinstance(mod, nn.Embedding):
        raise TypeError(f"{label}: expected nn.Embedding, got {type(mod).__name__}")
    reason = unsupported_reason(mod)
    if reason:
        raise ValueError(f"{label}: {reason}")


def unsupported_reason(mod: nn.Embedding) -> str | None:
    """Why an nn.Embedding cannot become a compressed table (None: it can)."""
    if mod.max_norm is not None:
        return (f"Embedding(max_norm={mod.max_norm}) renormalizes the rows it reads in forward (writes its "
                f"weight); a compressed table is read-only")
    return None


class _CompressedEmbedding(CompressedLinear):
    """What Int8Embedding and Int4Embedding share. It reuses CompressedLinear's storage contract
    (atomic, checked load_state_dict; .to(dtype) leaves the format's dtypes alone; skeletons), with
    an embedding's shapes: rows V = num_embeddings, D = embedding_dim."""

    float_type = nn.Embedding
    __jit_unused_properties__ = [*CompressedLinear.__jit_unused_properties__]

    def _init_shape(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None) -> None:
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(f"{type(self).__name__}: num_embeddings and embedding_dim must be >= 1, got "
                             f"{num_embeddings}, {embedding_dim}")
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"{type(self).__name__}: padding_idx must be within num_embeddings, got {padding_idx}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        # kept for to_float() and repr; forward reads the padding row like any other (nn.Embedding's forward)
        self.padding_idx = padding_idx + num_embeddings if padding_idx is not None and padding_idx < 0 else padding_idx
        # CompressedLinear's names, for the code they share (there is no bias)
        self.in_features, self.out_features = embedding_dim, num_embeddings
        self.register_buffer("bias", None)

    @property
    def shape_label(self) -> str:
        return f"{self.num_embeddings}x{self.embedding_dim}"

    def dense_bytes(self) -> int:
        """Bytes of the float32 [V, D] table this layer replaces."""
        return 4 * self.num_embeddings * self.embedding_dim

    def compressed_bytes(self) -> int:
        """Bytes of the stored format (the state_dict's canonical tensors)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def _meta_state(self):
        return None  # every stored tensor is a registered buffer

    def to_float(self) -> nn.Embedding:
        """An equivalent float32 nn.Embedding (weight = dequantize(), the same padding_idx)."""
        w = self.dequantize()
        return nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx, _weight=w,
                            _freeze=True, device=w.device)


class Int8Embedding(_CompressedEmbedding):
    """nn.Embedding with an int8 table and one float32 scale per row.

    Inputs: int32/int64 indices of any shape, each in [0, num_embeddings) (IndexError otherwise);
    output indices.shape + (embedding_dim,), float32 (cast the result, or call
    compressops.ops.int8_embedding with out_dtype, for another dtype). The rows read are dequantized;
    nothing else is.

    state_dict: weight int8 [V, D], weight_scale float32 [V] (compressops/formats/embedding.py),
    which is also what memory holds (a row-major table is the gather's layout).

    Tied to a head: when the model's lm_head Linear shares this embedding's weight (GPT-2) and the
    config converts both, the head becomes an Int8Linear and this layer holds no table of its own:
    it gathers the rows of the head's int8 weight out of the head's pack (the same values a
    standalone table gives: int8 rows, one scale per row), so memory and files hold the weight once
    (state_dict has the head's entries only; compressops.save records the tie and compressops.load
    restores it).

    Example:
        >>> q = Int8Embedding.from_float(torch.nn.Embedding(1000, 64))
        >>> e = q(torch.tensor([[1, 2, 3]]))  # float32 [1, 3, 64]
    """

    _fixed_dtype = ("weight_scale",)
    _value_bounds: ClassVar[dict[str, float | None]] = {"weight_scale": 0.0}
    _version = 1

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *, device=None):
        super().__init__()
        self._init_shape(num_embeddings, embedding_dim, padding_idx)
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.zeros(num_embeddings, dtype=torch.float32, device=device))
        self._head = None

    @classmethod
    def from_float(cls, mod: nn.Embedding, config: Int8 | None = None, name: str = "") -> Int8Embedding:
        """Quantize a float nn.Embedding (weight [V, D]) row by row.

        Args:
            mod: nn.Embedding without max_norm.
            config: Int8 config (default Int8(embeddings=True)); only the format matters here.
            name: the layer's name, used in error messages.
        Raises:
            TypeError: not an nn.Embedding. ValueError: max_norm set, or NaN/Inf weights.
        """
        label = name or "Int8Embedding.from_float"
        check_float_embedding(cls, mod, label)
        if on_meta(mod):
            return cls.skeleton(mod, config or Int8(embeddings=True))
        q = cls(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, device=mod.weight.device)
        w_q, scale = fe.quantize_int8(mod.weight, name=label)
        q.weight.copy_(w_q)
        q.weight_scale.copy_(scale)
        return q

    @classmethod
    def tied(cls, mod: nn.Embedding, head: nn.Module, name: str = "") -> Int8Embedding:
        """The replacement of float `mod` whose weight is tied to `head`'s (an Int8Linear converted from
        the Linear sharing it): it gathers from the head's int8 weight and holds no table itself."""
        label = name or "Int8Embedding.tied"
        check_float_embedding(cls, mod, label)
        q = cls(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, device="meta")
        q.tie_to(head)
        return q

    @classmethod
    def skeleton(cls, mod: nn.Embedding, config: Int8) -> Int8Embedding:
        """An empty Int8Embedding with the shapes of float `mod`, for load_state_dict (compressops.load)."""
        return cls(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, device=mod.weight.device)

    def tie_to(self, head: nn.Module) -> None:
        """Drop this layer's own table and gather from `head`'s int8 weight from now on (compressops.load
        calls it to restore a saved tie). `head`: an Int8Linear of shape [num_embeddings, embedding_dim]."""
        if type(head).__name__ != "Int8Linear" or (head.out_features, head.in_features) != (
                self.num_embeddings, self.embedding_dim):
            raise ValueError(f"Int8Embedding.tie_to: needs an Int8Linear of {self.num_embeddings}x{self.embedding_dim}, "
                             f"got {type(head).__name__} {getattr(head, 'shape_label', '')}")
        self.weight = None
        self.weight_scale = None
        # a plain attribute, not a submodule: the head sits elsewhere in the model (its own name,
        # its own state_dict entries); deepcopy and pickle keep the one shared object
        self.__dict__["_head"] = head

    def tied_source(self) -> nn.Module | None:
        """The module whose compressed weight this layer reads (None: it holds its own table)."""
        return self._head

    @property
    def config(self) -> Int8:
        return Int8(embeddings=True)

    @property
    def format_label(self) -> str:
        return "int8 rows (tied)" if self._head is not None else "int8 rows"

    def dense_bytes(self) -> int:
        # A tied table is the head's weight: the head's row counts it.
        return 0 if self._head is not None else super().dense_bytes()

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        if self._head is not None:
            return torch.ops.compressops.int8_embedding_packed(indices, self._head.weight_packed,
                                                               self._head.weight_scale, self.embedding_dim)
        return torch.ops.compressops.int8_embedding(indices, self.weight, self.weight_scale)

    def dequantize(self) -> torch.Tensor:
        """The float32 table [V, D] the layer gathers from."""
        if self._head is not None:
            return self._head.dequantize()
        return fe.dequantize_int8(self.weight, self.weight_scale)

    def _check_canonical(self, tensors):
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        w = state_dict.get(prefix + "weight")
        if self._head is None and w is not None and w.dtype == torch.int8 and w.numel() and int(w.min()) < -127:
            error_msgs.append(f"mismatch for {prefix}weight: the checkpoint holds -128, Int8Embedding's symmetric "
                              f"int8 weight lies in [-127, 127]")
            return False
        return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                             unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        tied = ", tied to an Int8Linear's weight" if self._head is not None else ""
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}, weight=int8 per-row{tied}"


class Int4Embedding(_CompressedEmbedding):
    """nn.Embedding with a group-wise 4-bit table: one float32 scale (and a 4-bit zero point) per
    group of `group_size` values of each row (compressops/formats/embedding.py).

    Inputs: int32/int64 indices of any shape, each in [0, num_embeddings); output
    indices.shape + (embedding_dim,), float32. Only the rows read are dequantized.

    state_dict: qweight uint8 [V, D_pad/2], scales float32 [V, G], zeros uint8 [V, G] (asymmetric
    only): the canonical format, also what memory holds.

    Example:
        >>> q = Int4Embedding.from_float(torch.nn.Embedding(1000, 64), compressops.Int4(group_size=32,
        ...                              embeddings=True))
        >>> e = q(torch.tensor([5, 7]))  # float32 [2, 64]
    """

    __jit_unused_properties__ = [*_CompressedEmbedding.__jit_unused_properties__]
    _fixed_dtype = ("scales",)
    _value_bounds: ClassVar[dict[str, float | None]] = {"scales": 0.0}
    _version = 1

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 group_size: int = 128, symmetric: bool = False, device=None):
        super().__init__()
        Int4(group_size=group_size, symmetric=symmetric)  # validates
        self._init_shape(num_embeddings, embedding_dim, padding_idx)
        self.group_size = group_size
        self.symmetric = symmetric
        dp = int4_format.padded_k(embedding_dim, group_size)
        g = dp // group_size
        self.register_buffer("qweight", torch.zeros(num_embeddings, dp // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.zeros(num_embeddings, g, dtype=torch.float32, device=device))
        self.register_buffer("zeros", None if symmetric else
                             torch.zeros(num_embeddings, g, dtype=torch.uint8, device=device))

    @classmethod
    def from_float(cls, mod: nn.Embedding, config: Int4 | None = None, name: str = "") -> Int4Embedding:
        """Quantize a float nn.Embedding (weight [V, D]) group-wise along D, round to nearest.

        Args:
            mod: nn.Embedding without max_norm.
            config: Int4 config (default Int4(embeddings=True)); group_size and symmetric apply,
                method does not (an embedding has no input activations: always round to nearest).
            name: the layer's name, used in error messages.
        Raises:
            TypeError: not an nn.Embedding. ValueError: max_norm set, or NaN/Inf weights.
        """
        config = config or Int4(embeddings=True)
        label = name or "Int4Embedding.from_float"
        check_float_embedding(cls, mod, label)
        if on_meta(mod):
            return cls.skeleton(mod, config)
        q = cls(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, group_size=config.group_size,
                symmetric=config.symmetric, device=mod.weight.device)
        qw, s, z = fe.quantize_int4(mod.weight, config.group_size, config.symmetric, name=label)
        q.qweight.copy_(qw)
        q.scales.copy_(s)
        if z is not None:
            q.zeros.copy_(z)
        return q

    @classmethod
    def skeleton(cls, mod: nn.Embedding, config: Int4) -> Int4Embedding:
        """An empty Int4Embedding with the shapes of float `mod`, for load_state_dict (compressops.load)."""
        return cls(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, group_size=config.group_size,
                   symmetric=config.symmetric, device=mod.weight.device)

    @property
    def config(self) -> Int4:
        return Int4(group_size=self.group_size, symmetric=self.symmetric, embeddings=True)

    @property
    def format_label(self) -> str:
        return f"int4 rows g{self.group_size} {'sym' if self.symmetric else 'asym'}"

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.ops.compressops.int4_embedding(indices, self.qweight, self.scales, self.zeros, self.embedding_dim)

    def dequantize(self) -> torch.Tensor:
        """The float32 table [V, D] the layer gathers from: (q - z) * s."""
        return fe.dequantize_int4(self.qweight, self.scales, self.zeros, self.embedding_dim)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        z = state_dict.get(prefix + "zeros")
        if z is not None and z.dtype == torch.uint8 and z.numel() and int(z.max()) > 15:
            error_msgs.append(f"mismatch for {prefix}zeros: zero points must lie in [0, 15], the checkpoint holds "
                              f"{int(z.max())}")
            return False
        return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                             unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return (f"{self.num_embeddings}, {self.embedding_dim}{pad}, weight=int4 group_size={self.group_size} "
                f"{'symmetric' if self.symmetric else 'asymmetric'}")

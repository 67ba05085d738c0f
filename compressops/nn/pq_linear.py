"""PQLinear: nn.Linear with a product-quantized weight, computed by table lookup."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from .. import ops
from ..algorithms.kmeans import pq_quantize_weight
from ..algorithms.pq_refine import GramObserver, refine_codebooks
from ..configs import PQ, Family, register_family
from ..formats import pq as pq_format
from .compressed_linear import CompressedLinear, meta_skeleton

__all__ = ["PQLinear"]


class PQLinear(CompressedLinear):
    """nn.Linear whose weight is product-quantized (codes + per-subspace codebooks).

    Each weight row is split into S = ceil(in_features / d) subvectors; subvector s of row n is
    codebooks[s, code(n, s)]. The forward pass builds, per input row, the table
    L[s, c] = x_s . codebooks[s, c] and sums the looked-up entries (asymmetric distance
    computation): no dense weight is ever formed. Inputs: float32/bfloat16/float16
    (..., in_features); the output has the input's dtype.

    state_dict: codes uint8 [out, S] (k=256) or [out, ceil(S/2)] (k=16, two 4-bit codes a byte,
    low nibble = even s), codebooks float32 [S, k, d], bias float32 [out] (if any): the canonical
    format of compressops/formats/pq.py. In memory the layer holds only the pack (`packed`, not
    saved) and the bias; the pack is lossless, so `codes` (an exact unpack) and `codebooks` (a view
    into the pack) give back the canonical tensors, and state_dict and load_state_dict translate.

    Example:
        >>> q = PQLinear.from_float(torch.nn.Linear(64, 32), PQ(num_centroids=16, subvector_dim=4))
        >>> y = q(torch.randn(4, 64))
    """

    __jit_unused_properties__ = [*CompressedLinear.__jit_unused_properties__, "codes", "codebooks"]

    _version = 1
    # k-means centroids of finite weights
    _value_bounds: ClassVar[dict[str, float | None]] = {"codebooks": None}
    _pack_name = "packed"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, num_centroids: int = 256,
                 subvector_dim: int = 4, device=None):
        super().__init__()
        PQ(num_centroids=num_centroids, subvector_dim=subvector_dim)  # validates
        if in_features < 1 or out_features < 1:
            raise ValueError(f"PQLinear: in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.num_centroids = num_centroids
        self.subvector_dim = subvector_dim
        self.register_buffer("packed", pq_format.zero_pack(out_features, in_features, subvector_dim, num_centroids,
                                                           device), persistent=False)
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)

    @property
    def num_subspaces(self) -> int:
        return pq_format.num_subspaces(self.in_features, self.subvector_dim)

    @property
    def codes(self) -> torch.Tensor:
        """The canonical codes (uint8 [out, S], or [out, ceil(S/2)] for k=16), unpacked exactly from
        the pack: a copy, so writes to it do not change the layer (load_state_dict does)."""
        return pq_format.unpack_codes(self.packed)

    @property
    def codebooks(self) -> torch.Tensor:
        """The canonical codebooks float32 [S, k, d]: a view into the pack (transposed, so not
        contiguous); writes to it change the layer."""
        return pq_format.unpack_codebooks(self.packed)

    def _canonical_spec(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        s, k, d = self.num_subspaces, self.num_centroids, self.subvector_dim
        return {"codes": (torch.uint8, pq_format.codes_shape(self.out_features, s, k)),
                "codebooks": (torch.float32, (s, k, d))}

    @classmethod
    def from_float(cls, mod: nn.Linear, config: PQ | None = None, calibration: torch.Tensor | None = None,
                   name: str = "") -> PQLinear:
        """Product-quantize a float nn.Linear.

        Args:
            mod: nn.Linear (float weight [out, in]).
            config: PQ config (default PQ()).
            calibration: optional Gram matrix X^T X [in, in] of the layer's inputs (what
                PQ.make_observer() collects); with config.refine the codebooks are re-fitted to
                minimise the output error on those inputs.
            name: the layer's name, used in error messages.
        Raises:
            TypeError: mod is not nn.Linear. ValueError: non-finite weights, bad calibration shape.
        """
        config = config or PQ()
        label = name or "PQLinear.from_float"
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"{label}: expected nn.Linear, got {type(mod).__name__}")
        if (skeleton := meta_skeleton(cls, mod, config)) is not None:
            return skeleton
        k, d = config.num_centroids, config.subvector_dim
        codes, codebooks = pq_quantize_weight(mod.weight, k, d, seed=config.seed, max_iter=config.max_iter,
                                              name=label)
        if calibration is not None and config.refine:
            if tuple(calibration.shape) != (mod.in_features, mod.in_features):
                raise ValueError(f"{label}: calibration must be the [in, in] = [{mod.in_features}, "
                                 f"{mod.in_features}] Gram matrix of the inputs, got {tuple(calibration.shape)}")
            s = codebooks.shape[0]
            codebooks = refine_codebooks(mod.weight, pq_format.unpacked_codes(codes, s, k), codebooks, calibration)
        q = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, num_centroids=k, subvector_dim=d,
                device=mod.weight.device)
        q.packed = ops.pq_pack(codes, codebooks, mod.in_features)
        if mod.bias is not None:
            q.bias.copy_(mod.bias.detach().float())
        return q

    @classmethod
    def skeleton(cls, mod: nn.Linear, config: PQ) -> PQLinear:
        """An empty PQLinear with the shapes of float `mod`, for load_state_dict (compressops.load)."""
        return cls(mod.in_features, mod.out_features, bias=mod.bias is not None, num_centroids=config.num_centroids,
                   subvector_dim=config.subvector_dim, device=mod.weight.device)

    @property
    def config(self) -> PQ:
        return PQ(num_centroids=self.num_centroids, subvector_dim=self.subvector_dim)

    @property
    def format_label(self) -> str:
        return f"pq (k={self.num_centroids}, d={self.subvector_dim})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.pq_linear(x, self.packed, self.bias)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] this layer represents."""
        return pq_format.dequantize(self.codes, self.codebooks, self.in_features)

    def compressed_bytes(self) -> int:
        """Bytes of the stored format (the state_dict's codes, codebooks and bias)."""
        stored = [math.prod(shape) * dtype.itemsize for dtype, shape in self._canonical_spec().values()]
        return sum(stored) + (4 * self.out_features if self.bias is not None else 0)

    def _canonical_state(self):
        # copies: a view into the pack would save the whole pack (torch.save) or be refused (safetensors)
        return {"codes": self.codes, "codebooks": self.codebooks.clone(memory_format=torch.contiguous_format)}

    def _pack_canonical(self, tensors):
        self.packed = ops.pq_pack(tensors["codes"], tensors["codebooks"], self.in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"num_centroids={self.num_centroids}, subvector_dim={self.subvector_dim}")


def _convert(mod: nn.Linear, config: PQ, name: str, calibration=None, prepared=None) -> PQLinear:
    # calibration: the input Gram matrix GramObserver accumulated (only when calibration_data is given)
    return PQLinear.from_float(mod, config, calibration=calibration, name=name)


register_family(Family(
    config=PQ, converts=(nn.Linear,), modules=(PQLinear,), convert=_convert,
    make_observer=lambda config: GramObserver(),
    examples={"pq16": (PQ(num_centroids=16, subvector_dim=2, max_iter=3), "linear"),
              "pq256": (PQ(num_centroids=256, subvector_dim=4, max_iter=5), "linear")},
))

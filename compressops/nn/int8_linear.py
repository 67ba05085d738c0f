"""Int8Linear: the drop-in replacement of nn.Linear with int8 weights."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .. import ops
from ..algorithms.observers import AbsMaxObserver
from ..configs import Family, Int8, register_family
from ..formats import int8 as int8_format
from .compressed_linear import CompressedLinear, meta_skeleton
from .embedding import Int8Embedding, unsupported_reason

__all__ = ["Int8Linear"]


class Int8Linear(CompressedLinear):
    """nn.Linear with an int8 weight and a float32 scale per output channel.

    Activations are quantized per row at run time (act="dynamic", W8A8), with one calibrated
    scale (act="static"), or left float (act="weight_only"). Inputs: float32/bfloat16/float16
    (..., in_features), any leading dims; the output has the input's dtype.

    state_dict: weight int8 [out, in], weight_scale float32 [out], bias float32 [out] (if any),
    act_scale float32 [] (static only): the canonical format of compressops/formats/int8.py. In
    memory the layer holds the pack (`weight_packed`, not saved) instead of `weight`, which is an
    exact unpack of it (a copy, since the pack is blocked: writes to it do not change the layer);
    state_dict and load_state_dict translate, so the weight is never held twice. In a BERT-style
    self-attention, convert fuses query/key/value into one pack and GEMM (compressops/nn/fused_qkv.py);
    the three stay Int8Linear and read their rows of that pack.

    Example:
        >>> lin = torch.nn.Linear(64, 32)
        >>> q = Int8Linear.from_float(lin)
        >>> y = q(torch.randn(4, 64))
    """

    __jit_unused_properties__ = [*CompressedLinear.__jit_unused_properties__, "weight"]
    _fixed_dtype = ("weight_scale", "act_scale", "bias")
    # a zero scale is an all-zero row's; a static scale has a finite reciprocal (check_act_scale)
    _value_bounds: ClassVar[dict[str, float | None]] = {"weight_scale": 0.0, "act_scale": int8_format.MIN_ACT_SCALE}

    _version = 1
    # (FusedQKV, first row, end row) while this layer's rows live in an attention's fused pack
    # (compressops/nn/fused_qkv.py); its own pack is then an empty placeholder. Also set per instance
    # (TorchScript sees only those); the class value serves layers pickled before it existed.
    _qkv = None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, act: str = "dynamic",
                 device=None):
        super().__init__()
        Int8(act=act)  # validates act
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Int8Linear: in_features and out_features must be >= 1, got "
                             f"{in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.act = act
        self._qkv = None
        self.register_buffer("weight_packed", int8_format.zero_pack(out_features, in_features, device),
                             persistent=False)
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)
        self.register_buffer("act_scale", torch.ones((), dtype=torch.float32, device=device) if act == "static" else None)

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weight [out, in]: an exact unpack of the pack (a copy; writes to it change nothing)."""
        if self._qkv is not None:
            group, start, stop = self._qkv
            return group.rows(start, stop)
        return int8_format.unpack_weight(self.weight_packed)

    @classmethod
    def from_float(cls, mod: nn.Linear, config: Int8 | None = None, act_scale: torch.Tensor | None = None,
                   name: str = "") -> Int8Linear:
        """Quantize a float nn.Linear.

        Args:
            mod: nn.Linear (float weight [out, in]).
            config: Int8 config (default Int8()).
            act_scale: the static activation scale (required when config.act == "static").
            name: the layer's name, used in error messages.
        Raises:
            ValueError: non-finite weights, missing act_scale for static mode.
        """
        config = config or Int8()
        label = name or "Int8Linear.from_float"
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"{label}: expected nn.Linear, got {type(mod).__name__}")
        if (skeleton := meta_skeleton(cls, mod, config)) is not None:
            return skeleton
        if config.act == "static" and act_scale is None:
            raise ValueError(f"{label}: Int8(act='static') needs an activation scale; pass calibration_data "
                             f"to compressops.convert")
        w_q, scale = int8_format.quantize_weight(mod.weight, name=label)
        q = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, act=config.act,
                device=mod.weight.device)
        q.weight_packed = ops.int8_pack_weight(w_q)
        q.weight_scale.copy_(scale)
        if mod.bias is not None:
            q.bias.copy_(mod.bias.detach().float())
        if config.act == "static":
            q.act_scale.copy_(act_scale.reshape(()).float())
        return q

    @classmethod
    def skeleton(cls, mod: nn.Linear, config: Int8) -> Int8Linear:
        """An empty Int8Linear with the shapes of float `mod`, for load_state_dict (compressops.load)."""
        return cls(mod.in_features, mod.out_features, bias=mod.bias is not None, act=config.act,
                   device=mod.weight.device)

    @property
    def config(self) -> Int8:
        return Int8(act=self.act)

    @property
    def format_label(self) -> str:
        """Short format description for compressops.report."""
        return f"int8 ({self.act}, fused q/k/v)" if self._qkv is not None else f"int8 ({self.act})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._qkv is not None:
            return self._fused_forward(x)
        if self.act == "weight_only":
            return ops.int8_weight_only_linear(x, self.weight_packed, self.weight_scale, self.bias)
        # The op itself, not the ops.int8_linear wrapper: TorchScript cannot compile a Python
        # function with a keyword-only argument that has a default.
        return torch.ops.compressops.int8_linear(x, self.weight_packed, self.weight_scale, self.bias,
                                                 act_scale=self.act_scale)

    @torch.jit.unused
    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        group, start, stop = self._qkv
        # The attention's pre-hook hands over the fused result [..., 3H] (3H != K: fuse_qkv checks);
        # any other input is this layer's own, through the fused GEMM.
        if x.shape[-1] != group.out_features:
            x = group(x)
        return x[..., start:stop]

    def _join(self, group: nn.Module, start: int, stop: int) -> None:
        """Read rows [start, stop) of `group`'s fused pack from now on, and drop this layer's own pack."""
        self._qkv = (group, start, stop)
        self.weight_packed = self.weight_packed.new_empty(0)

    def _leave(self) -> None:
        """Hold this layer's rows of the fused pack in its own pack again (undoes _join)."""
        weight = self.weight
        self._qkv = None
        self.weight_packed = ops.int8_pack_weight(weight)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] this layer computes with."""
        return self.weight.float() * self.weight_scale[:, None]

    def compressed_bytes(self) -> int:
        """Bytes of the stored format (the state_dict's int8 weight and float32 scales and bias)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def _canonical_spec(self):
        return {"weight": (torch.int8, (self.out_features, self.in_features))}

    def _canonical_state(self):
        return {"weight": self.weight}

    def _check_canonical(self, tensors):
        if int(tensors["weight"].min()) < -127:
            return "weight: the checkpoint holds -128, Int8Linear's symmetric int8 weight lies in [-127, 127]"
        return None

    def _pack_canonical(self, tensors):
        if self._qkv is not None:
            group, start, _ = self._qkv
            group.set_rows(start, tensors["weight"])
            return
        self.weight_packed = ops.int8_pack_weight(tensors["weight"])

    def _load_from_state_dict(self, state_dict, prefix, *args):
        loaded = super()._load_from_state_dict(state_dict, prefix, *args)
        if loaded and self._qkv is not None:
            group, start, _ = self._qkv
            group.set_params(start, self.weight_scale, self.bias)
        return loaded

    def extra_repr(self) -> str:
        fused = f", rows {self._qkv[1]}:{self._qkv[2]} of the fused q/k/v pack" if self._qkv is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight=int8 per-channel, act={self.act}{fused}")


def _convert(mod: nn.Module, config: Int8, name: str, calibration=None, prepared=None) -> nn.Module:
    if isinstance(mod, nn.Embedding):
        return Int8Embedding.from_float(mod, config, name=name)
    # calibration: the static activation scale AbsMaxObserver measured (act="static" only)
    return Int8Linear.from_float(mod, config, act_scale=calibration, name=name)


def _unsupported(config: Int8, mod: nn.Module) -> str | None:
    if isinstance(mod, nn.Embedding):
        if not config.embeddings:
            return "Int8(embeddings=False) leaves embeddings dense (Int8(embeddings=True) converts them)"
        return unsupported_reason(mod)
    return None


def _tie(members) -> dict[str, nn.Module] | str:
    """One int8 copy for an Embedding and a Linear sharing one weight [V, D] (GPT-2's wte and lm_head):
    the Linear becomes an Int8Linear, the Embedding gathers the rows of its weight."""
    embs = [m for m in members if isinstance(m[1], nn.Embedding)]
    lins = [m for m in members if isinstance(m[1], nn.Linear)]
    if len(members) != 2 or len(embs) != 1 or len(lins) != 1 or lins[0][1].weight is not embs[0][1].weight:
        return "Int8 shares one copy only between an Embedding and a Linear that hold the same weight"
    (ename, emb, _, _), (lname, lin, lcfg, lcal) = embs[0], lins[0]
    head = _convert(lin, lcfg, lname, lcal)
    return {lname: head, ename: Int8Embedding.tied(emb, head, name=ename)}


register_family(Family(
    config=Int8, converts=(nn.Linear, nn.Embedding), modules=(Int8Linear, Int8Embedding), convert=_convert,
    unsupported_reason=_unsupported, tie=_tie,
    make_observer=lambda config: AbsMaxObserver(),
    examples={"int8": (Int8(), "linear"), "int8_static": (Int8(act="static"), "linear"),
              "int8_weight_only": (Int8(act="weight_only"), "linear")},
))

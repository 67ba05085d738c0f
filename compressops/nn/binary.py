"""BinaryConv2d and BinaryLinear: 1-bit weights (and activations), XNOR-popcount kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..algorithms.binarize import first_last_filter, sign_ste
from ..configs import Binary, Family, register_family
from ..formats import binary as binary_format
from ._binary_ste import binary_ste, needs_graph, packed_conv2d, packed_linear
from .compressed_linear import check_state, meta_skeleton, registered_spec

__all__ = ["BinaryConv2d", "BinaryLinear"]


def _pair(v, name):
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(t) for t in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v}")
    return v


def _check_input(x: torch.Tensor, layer: str, channels: int, conv: bool):
    # The packed kernels only see ceil(C/64) words, so a wrong C within the same word count would
    # run and be silently wrong: check it here. (Not while tracing: a trace records no Python checks,
    # and comparing traced sizes only warns.)
    if torch.jit.is_tracing():
        return
    if (conv and x.dim() != 4 and x.dim() != 3) or x.dim() < 1 or x.size(-3 if conv else -1) != channels:
        expected = "[N, " + str(channels) + ", H, W] or [" + str(channels) + ", H, W]" if conv else \
            "[..., " + str(channels) + "]"
        raise ValueError(layer + ": x must have shape " + expected + ", got " + str(list(x.shape)))
    if x.dtype != torch.float32 and x.dtype != torch.bfloat16 and x.dtype != torch.float16:
        raise ValueError(layer + ": x must be float32, bfloat16 or float16, got " + str(x.dtype))


class _BinaryBase(nn.Module):
    """What BinaryConv2d and BinaryLinear share: what they hold, the latent training weight,
    state_dict translation, bookkeeping.

    In memory a layer holds what its forward path reads and nothing else: with 1-bit activations
    (W1A1) the pack of ops.binary_pack_weight (`weight_packed`), with float activations (W1A32) the
    float32 +-1 weight in torch's layout (`weight_signs`, what F.conv2d / F.linear take); the other
    is an empty tensor, so torch.jit.script types both. Neither is saved: state_dict holds the
    canonical weight_bits (a view into the pack, or computed from the signs), alpha and bias.
    """

    _version = 1
    # Report/bookkeeping properties that torch.jit.script need not (and cannot) compile.
    __jit_unused_properties__ = ["config", "format_label", "shape_label", "weight_bits"]

    def _init_buffers(self, out_ch, bias, device):
        if self.binarize_activations:
            # Zero layout bytes are the pack of all-zero weight_bits: no pack op on placeholder data.
            packed = binary_format.zero_pack(out_ch, self._in, self._kernel(), device=device)
            signs = torch.empty(0, device=device)
        else:
            packed = torch.empty(0, dtype=torch.uint8, device=device)
            signs = -torch.ones(self._signs_shape(), device=device)  # the signs of all-zero weight_bits
        self.register_buffer("weight_packed", packed, persistent=False)
        self.register_buffer("weight_signs", signs, persistent=False)
        self.register_buffer("alpha", torch.ones(out_ch, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_ch, dtype=torch.float32, device=device) if bias else None)
        # The latent real-valued weight, only while the layer is trainable (see enable_training).
        self.weight = None

    # -- format ----------------------------------------------------------------------------------
    @property
    def weight_bits(self) -> torch.Tensor:
        """The canonical sign bits, int64 [OC, KH, KW, ceil(C/64)] (conv) or [OUT, ceil(C/64)]
        (linear): a view into the pack with 1-bit activations (writes to it change the layer),
        computed from the float signs otherwise."""
        if self.binarize_activations:
            return binary_format.unpack_weight(self.weight_packed, type(self).__name__, conv=self._kernel() is not None)
        return binary_format.bits_of_signs(self.weight_signs)

    def _pack_info(self) -> binary_format.PackInfo:
        """What weight_packed's header holds (for a backward that must not read it, see binary_ste)."""
        kh, kw = self._kernel() or (1, 1)
        return binary_format.PackInfo(self.alpha.numel(), self._in, kh, kw, binary_format.words(self._in))

    def _set_bits(self, bits: torch.Tensor, name: str) -> None:
        """Hold canonical weight_bits the way this layer's mode computes with them."""
        bits = bits.detach().to(self.alpha.device)
        if self.binarize_activations:
            self.weight_packed = ops.binary_pack_weight(bits, self._in)
        else:
            binary_format.check_pack_weight(bits, self._in, name)
            self.weight_signs = binary_format.weight_signs(bits, self._in)

    def _set_from_weight(self, w: torch.Tensor, name: str) -> None:
        bits, alpha = binary_format.binarize_weight(w, name=name)
        if self.scale == "none":
            alpha = torch.ones_like(alpha)
        self._set_bits(bits, name)
        with torch.no_grad():
            self.alpha.copy_(alpha)

    @property
    def config(self) -> Binary:
        return Binary(scale=self.scale, binarize_activations=self.binarize_activations)

    @property
    def format_label(self) -> str:
        return f"binary ({'W1A1' if self.binarize_activations else 'W1A32'}, scale={self.scale})"

    def dense_bytes(self) -> int:
        """Bytes of the fp32 weight and bias this layer replaces."""
        return 4 * (self._weight_numel() + (self.alpha.numel() if self.bias is not None else 0))

    def compressed_bytes(self) -> int:
        """Bytes of the canonical format (the state_dict's sign bits, alpha and bias)."""
        words = 1
        for d in self._bits_shape():
            words *= d
        return 8 * words + sum(b.numel() * b.element_size() for b in (self.alpha, self.bias) if b is not None)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight alpha * sign(w) this layer computes with (torch layout)."""
        return binary_format.dequantize(self.weight_bits, self.alpha, self._in)

    # -- training --------------------------------------------------------------------------------
    def enable_training(self, weight: torch.Tensor | None = None) -> None:
        """Keep a latent float weight Parameter (default: the dequantized weight) for training.

        In train mode the layer then runs a differentiable path (straight-through sign); eval()
        repacks the bits from the latent weight; freeze() drops it."""
        w = self.dequantize() if weight is None else weight.detach().float().clone()
        self.weight = nn.Parameter(w.to(self.alpha.device))

    def pack(self) -> None:
        """Repack the sign bits and alpha from the latent weight (after optimizer steps)."""
        if self.weight is not None:
            self._set_from_weight(self.weight, type(self).__name__)

    def freeze(self) -> None:
        """Pack the bits from the latent weight and drop it: the weights are frozen afterwards (x still
        gets the straight-through gradient)."""
        self.pack()
        self.weight = None

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode:
            self.pack()
        return self

    def _training_path(self) -> bool:
        return self.training and self.weight is not None

    def _binary_weight_ste(self) -> torch.Tensor:
        w = self.weight
        s = sign_ste(w)
        if self.scale == "none":
            return s
        alpha = w.abs().flatten(1).mean(1).reshape(-1, *([1] * (w.dim() - 1)))
        return s * alpha

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        on_meta = self.weight_packed.device.type == "meta"  # a skeleton: the shape, no bits to unpack
        bits = torch.empty(self._bits_shape(), dtype=torch.int64, device="meta") if on_meta else self.weight_bits
        destination[prefix + "weight_bits"] = bits.detach()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Everything is checked before anything changes (as CompressedLinear does): exact dtypes and
        # shapes, a finite alpha (any sign: BinaryChain folds a batch norm's scale into it), and
        # weight_bits a pack would accept.
        key = prefix + "weight_bits"
        spec = {**registered_spec(self), "weight_bits": (torch.int64, self._bits_shape())}
        problems, missing = check_state(type(self).__name__, state_dict, prefix, spec, {"alpha": None})
        if not problems and key not in missing:
            try:
                binary_format.check_pack_weight(state_dict[key], self._in, key)
            except ValueError as e:
                problems.append(f"{key}: {e}")
        if problems or (strict and missing):
            error_msgs.extend(problems)
            missing_keys.extend(missing)
            return
        # A trainable layer saves its latent weight; a skeleton gains the Parameter to receive it.
        if prefix + "weight" in state_dict and self.weight is None:
            self.weight = nn.Parameter(torch.empty_like(state_dict[prefix + "weight"], dtype=torch.float32))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in unexpected_keys:  # the base class knows only the registered buffers
            unexpected_keys.remove(key)
        bits = state_dict.get(key)
        if bits is None:
            missing_keys.append(key)
            return
        self._set_bits(bits, key)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) would cast alpha, bias and the signs; the format fixes them at float32.
        keep = {n: getattr(self, n) for n in ("alpha", "bias", "weight_signs") if getattr(self, n) is not None}
        super()._apply(fn, recurse)
        for n, old in keep.items():
            new = getattr(self, n)
            if new.dtype != torch.float32:
                setattr(self, n, old.to(new.device))
        return self


class BinaryConv2d(_BinaryBase):
    """nn.Conv2d with sign-binarized weights (bit-packed along input channels) and a per-output-
    channel scale; with binarize_activations=True the input is binarized too and the layer runs
    the XNOR-popcount kernel: y = alpha * conv2d(sign(x), sign(w), zero padding) + bias.

    Inputs: float32/bfloat16/float16 NCHW (channels_last is the fast layout) or unbatched CHW, as
    nn.Conv2d; the output has the input's dtype and (batched) channels_last memory format. Dilation
    1, groups 1, zero padding.

    Gradients: with 1-bit activations and no latent weight the packed kernels run, and backward
    gives x the straight-through gradient (compressops/nn/_binary_ste.py); alpha, bias and the bits
    are frozen (backward raises if alpha or bias requires grad). With a latent weight in train mode
    the layer trains (enable_training).

    state_dict: weight_bits int64 [OC, KH, KW, ceil(C/64)], alpha float32 [OC], bias float32 [OC]
    (if any), the canonical format of compressops/formats/binary.py; plus the latent float `weight`
    Parameter while trainable. In memory: the pack `weight_packed` (W1A1) or the float32 +-1
    `weight_signs` [OC, C, KH, KW] (W1A32), never saved; `weight_bits` is derived from it.

    Example:
        >>> conv = torch.nn.Conv2d(64, 64, 3, padding=1)
        >>> b = BinaryConv2d.from_float(conv)
        >>> y = b(torch.randn(1, 64, 32, 32))
    """

    float_type = nn.Conv2d  # the float module it replaces (compressops.load checks the model holds one)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True, *,
                 scale: str = "channel", binarize_activations: bool = True, device=None):
        super().__init__()
        Binary(scale=scale)  # validates scale
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"BinaryConv2d: in_channels and out_channels must be >= 1, got {in_channels}, "
                             f"{out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "BinaryConv2d: kernel_size")
        self.stride = _pair(stride, "BinaryConv2d: stride")
        self.padding = _pair(padding, "BinaryConv2d: padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"BinaryConv2d: bad kernel_size/stride/padding {self.kernel_size}, {self.stride}, "
                             f"{self.padding}")
        self.scale = scale
        self.binarize_activations = binarize_activations
        self._in = in_channels
        self._init_buffers(out_channels, bias, device)

    def _kernel(self):
        return self.kernel_size

    def _bits_shape(self) -> tuple[int, ...]:
        kh, kw = self.kernel_size
        return (self.out_channels, kh, kw, binary_format.words(self.in_channels))

    def _signs_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def _weight_numel(self):
        return self.out_channels * self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    @staticmethod
    def unsupported_reason(mod: nn.Module) -> str | None:
        """Why a Conv2d cannot become a BinaryConv2d (None when it can; other module types: None)."""
        if not isinstance(mod, nn.Conv2d):
            return None
        if mod.groups != 1:
            return f"groups={mod.groups} is not supported by BinaryConv2d (groups must be 1)"
        if tuple(mod.dilation) != (1, 1):
            return f"dilation={tuple(mod.dilation)} is not supported by BinaryConv2d (dilation must be 1)"
        if mod.padding_mode != "zeros":
            return f"padding_mode={mod.padding_mode!r} is not supported by BinaryConv2d (only 'zeros')"
        if mod.padding == "same" and any(k % 2 == 0 for k in mod.kernel_size):
            return (f"padding='same' with an even kernel {tuple(mod.kernel_size)} needs asymmetric padding, "
                    f"which BinaryConv2d does not support")
        return None

    @staticmethod
    def _check_float(mod: nn.Conv2d, label: str):
        if not isinstance(mod, nn.Conv2d):
            raise TypeError(f"{label}: expected nn.Conv2d, got {type(mod).__name__}")
        reason = BinaryConv2d.unsupported_reason(mod)
        if reason:
            raise ValueError(f"{label}: {reason}")
        padding = mod.padding
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0)
            return tuple((k - 1) // 2 for k in mod.kernel_size)  # 'same' (stride 1), odd kernels
        return tuple(padding)

    @classmethod
    def from_float(cls, mod: nn.Conv2d, config: Binary | None = None, name: str = "",
                   trainable: bool = False) -> BinaryConv2d:
        """Binarize a float nn.Conv2d (groups 1, dilation 1, zero padding incl. 'same' for odd kernels).

        Args:
            mod: nn.Conv2d.
            config: Binary config (default Binary()).
            name: the layer's name, for error messages.
            trainable: keep the float weight as a latent Parameter for training.
        Raises:
            ValueError: groups > 1, dilation > 1, non-zero padding modes, non-finite weights.
        """
        config = config or Binary()
        label = name or "BinaryConv2d.from_float"
        padding = cls._check_float(mod, label)
        if (skeleton := meta_skeleton(cls, mod, config)) is not None:
            return skeleton
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, padding, bias=mod.bias is not None,
                scale=config.scale, binarize_activations=config.binarize_activations, device=mod.weight.device)
        q._set_from_weight(mod.weight, label)
        if mod.bias is not None:
            with torch.no_grad():
                q.bias.copy_(mod.bias.detach().float())
        if trainable:
            q.enable_training(mod.weight)
        return q

    @classmethod
    def skeleton(cls, mod: nn.Conv2d, config: Binary) -> BinaryConv2d:
        """An empty BinaryConv2d with the shapes of float `mod`, for load_state_dict (compressops.load)."""
        padding = cls._check_float(mod, "BinaryConv2d.skeleton")
        return cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, padding, bias=mod.bias is not None,
                   scale=config.scale, binarize_activations=config.binarize_activations, device=mod.weight.device)

    @property
    def shape_label(self) -> str:
        kh, kw = self.kernel_size
        return f"{self.out_channels}x{self.in_channels}x{kh}x{kw}"

    @torch.jit.unused
    def _forward_train(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable straight-through path (training a latent weight)."""
        xb = sign_ste(x) if self.binarize_activations else x
        w = self._binary_weight_ste().to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.conv2d(xb, w, b, self.stride, self.padding)

    @torch.jit.unused
    def _forward_ste(self, x: torch.Tensor) -> torch.Tensor:
        """The packed kernels, recorded for autograd (straight-through gradient for x)."""
        return binary_ste(x, self.weight_packed, self.alpha, self.bias, self._pack_info(),
                          (self.stride, self.padding), layer="BinaryConv2d").to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "BinaryConv2d", self.in_channels, conv=True)
        if x.dim() == 3:  # unbatched [C, H, W], as nn.Conv2d takes it
            return self._forward_nchw(x.unsqueeze(0)).squeeze(0)
        return self._forward_nchw(x)

    def _forward_nchw(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self._training_path():
                return self._forward_train(x)
            if self.binarize_activations and needs_graph(x, self.alpha, self.bias):
                return self._forward_ste(x)
        if not self.binarize_activations:
            y = F.conv2d(x.float(), self.weight_signs, None, self.stride, self.padding)
            y = y * self.alpha.reshape(1, -1, 1, 1)
            if self.bias is not None:
                y = y + self.bias.reshape(1, -1, 1, 1)
            return y.to(x.dtype)
        return packed_conv2d(x, self.weight_packed, self.alpha, self.bias, self.stride, self.padding).to(x.dtype)

    def to_float(self) -> nn.Conv2d:
        """An nn.Conv2d with weight alpha * sign(w). With binarize_activations=True this layer equals
        to_float() applied to sign(x) (sign(0) = +1)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         bias=self.bias is not None, device=self.alpha.device)
        with torch.no_grad():
            conv.weight.copy_(self.dequantize())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, weight=1-bit scale={self.scale}, "
                f"act={'1-bit' if self.binarize_activations else 'float'}"
                f"{', trainable' if self.weight is not None else ''}")


class BinaryLinear(_BinaryBase):
    """nn.Linear with sign-binarized weights and a per-output-channel scale; with
    binarize_activations=True: y = alpha * (sign(x) @ sign(w).T) + bias via XNOR-popcount.

    Inputs: float (..., in_features), any rank; the output has the input's dtype. Gradients: as
    BinaryConv2d (straight-through for x; alpha, bias and the bits frozen).
    state_dict: weight_bits int64 [out, ceil(in/64)], alpha float32 [out], bias float32 [out] (if
    any). In memory: the pack `weight_packed` (W1A1) or the float32 +-1 `weight_signs` [out, in]
    (W1A32), as BinaryConv2d.
    """

    float_type = nn.Linear  # the float module it replaces (compressops.load checks the model holds one)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, scale: str = "channel",
                 binarize_activations: bool = True, device=None):
        super().__init__()
        Binary(scale=scale)
        if in_features < 1 or out_features < 1:
            raise ValueError(f"BinaryLinear: in_features and out_features must be >= 1, got {in_features}, "
                             f"{out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.scale = scale
        self.binarize_activations = binarize_activations
        self._in = in_features
        self._init_buffers(out_features, bias, device)

    def _kernel(self):
        return None

    def _bits_shape(self) -> tuple[int, ...]:
        return (self.out_features, binary_format.words(self.in_features))

    def _signs_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)

    def _weight_numel(self):
        return self.out_features * self.in_features

    @classmethod
    def from_float(cls, mod: nn.Linear, config: Binary | None = None, name: str = "",
                   trainable: bool = False) -> BinaryLinear:
        """Binarize a float nn.Linear (see BinaryConv2d.from_float)."""
        config = config or Binary()
        label = name or "BinaryLinear.from_float"
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"{label}: expected nn.Linear, got {type(mod).__name__}")
        if (skeleton := meta_skeleton(cls, mod, config)) is not None:
            return skeleton
        q = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, scale=config.scale,
                binarize_activations=config.binarize_activations, device=mod.weight.device)
        q._set_from_weight(mod.weight, label)
        if mod.bias is not None:
            with torch.no_grad():
                q.bias.copy_(mod.bias.detach().float())
        if trainable:
            q.enable_training(mod.weight)
        return q

    @classmethod
    def skeleton(cls, mod: nn.Linear, config: Binary) -> BinaryLinear:
        return cls(mod.in_features, mod.out_features, bias=mod.bias is not None, scale=config.scale,
                   binarize_activations=config.binarize_activations, device=mod.weight.device)

    @property
    def shape_label(self) -> str:
        return f"{self.out_features}x{self.in_features}"

    @torch.jit.unused
    def _forward_train(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable straight-through path (training a latent weight)."""
        xb = sign_ste(x) if self.binarize_activations else x
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(xb, self._binary_weight_ste().to(x.dtype), b)

    @torch.jit.unused
    def _forward_ste(self, x: torch.Tensor) -> torch.Tensor:
        """The packed kernels, recorded for autograd (straight-through gradient for x)."""
        return binary_ste(x, self.weight_packed, self.alpha, self.bias, self._pack_info(),
                          layer="BinaryLinear").to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "BinaryLinear", self.in_features, conv=False)
        if not torch.jit.is_scripting():
            if self._training_path():
                return self._forward_train(x)
            if self.binarize_activations and needs_graph(x, self.alpha, self.bias):
                return self._forward_ste(x)
        if not self.binarize_activations:
            y = F.linear(x.float(), self.weight_signs) * self.alpha
            if self.bias is not None:
                y = y + self.bias
            return y.to(x.dtype)
        return packed_linear(x, self.weight_packed, self.alpha, self.bias).to(x.dtype)

    def to_float(self) -> nn.Linear:
        """An nn.Linear with weight alpha * sign(w) (see BinaryConv2d.to_float)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.alpha.device)
        with torch.no_grad():
            lin.weight.copy_(self.dequantize())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight=1-bit scale={self.scale}, act={'1-bit' if self.binarize_activations else 'float'}"
                f"{', trainable' if self.weight is not None else ''}")


def _convert(mod: nn.Module, config: Binary, name: str, calibration=None, prepared=None):
    if isinstance(mod, nn.Conv2d):
        return BinaryConv2d.from_float(mod, config, name=name)
    return BinaryLinear.from_float(mod, config, name=name)


def _unsupported_reason(config: Binary, mod: nn.Module) -> str | None:
    return BinaryConv2d.unsupported_reason(mod)


def _model_filter(config: Binary, model: nn.Module):
    return first_last_filter(model) if config.keep_first_last else None


register_family(Family(
    config=Binary, converts=(nn.Conv2d, nn.Linear), modules=(BinaryConv2d, BinaryLinear), convert=_convert,
    unsupported_reason=_unsupported_reason, model_filter=_model_filter,
    examples={"binary": (Binary(), "conv"), "binary_w1a1": (Binary(keep_first_last=False), "conv"),
              "binary_w1a32": (Binary(binarize_activations=False, keep_first_last=False), "conv")},
))

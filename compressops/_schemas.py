"""Mirror of the op schemas in csrc/ops.cpp, used only when the native library is absent.

csrc/ops.cpp is the source of truth; tests/test_registry.py asserts these strings match what
the native library registers, so the two cannot drift apart.
"""

SCHEMAS: dict[str, str] = {
    "int8_pack_weight": "(Tensor w_q) -> Tensor",
    "int8_quantize_activation": "(Tensor x, Tensor? act_scale=None) -> (Tensor, Tensor)",
    "int8_linear": (
        "(Tensor x, Tensor w_packed, Tensor w_scale, Tensor? bias=None, Tensor? act_scale=None, "
        "ScalarType? out_dtype=None) -> Tensor"
    ),
    "int8_weight_only_linear": (
        "(Tensor x, Tensor w_packed, Tensor w_scale, Tensor? bias=None, "
        "ScalarType? out_dtype=None) -> Tensor"
    ),
    # [int4 schemas]
    "int4_pack_weight": "(Tensor qweight, Tensor scales, Tensor? zeros, int in_features, int group_size) -> Tensor",
    "int4_linear": (
        "(Tensor x, Tensor w_packed, int out_features, Tensor? bias=None, ScalarType? out_dtype=None) -> Tensor"
    ),

    # [sparse schemas]
    "sparse24_linear": "(Tensor x, Tensor values, Tensor meta, int in_features, Tensor? bias=None) -> Tensor",
    "sparse24_int8_linear": (
        "(Tensor x, Tensor values, Tensor meta, Tensor w_scale, int in_features, Tensor? bias=None) -> Tensor"
    ),
    "csr_pack": "(Tensor crow, Tensor col, int in_features) -> Tensor",
    "csr_linear": "(Tensor x, Tensor packed, Tensor values, int out_features, Tensor? bias=None) -> Tensor",

    # [pq schemas]
    "pq_pack": "(Tensor codes, Tensor codebooks, int in_features) -> Tensor",
    "pq_linear": (
        "(Tensor x, Tensor packed, int in_features, int out_features, Tensor? bias=None, "
        "ScalarType? out_dtype=None) -> Tensor"
    ),

    # [binary schemas]
    "binary_pack_activation": "(Tensor x) -> Tensor",
    "binary_conv2d": (
        "(Tensor x_packed, Tensor w_packed, Tensor alpha, Tensor? bias, int in_channels, "
        "int[2] kernel_size, int[2] stride, int[2] padding, float? clamp_min=None, float? clamp_max=None) -> Tensor"
    ),
    "binary_conv2d_packed": (
        "(Tensor x_packed, Tensor w_packed, Tensor alpha, Tensor? bias, int in_channels, "
        "int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor"
    ),
    "binary_linear": (
        "(Tensor x_packed, Tensor w_packed, Tensor alpha, Tensor? bias, int in_features, "
        "float? clamp_min=None, float? clamp_max=None) -> Tensor"
    ),

}

"""Triton GPU kernels, one module per op family (`<family>.py`).

They are registered as the CUDA kernels of the compressops ops by compressops/ops.py through
`_register_triton_cuda`, which imports the module on first use, so importing compressops never
imports triton. Tests run them on CPU tensors under TRITON_INTERPRET=1 (small shapes).
"""

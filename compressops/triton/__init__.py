"""Triton GPU kernels, one module per op family (`<family>.py`).

Each family module of compressops/ops/ registers its op's kernel here as the op's CUDA kernel
(`_register(..., triton="<module>.<fn>")`), which imports the module on first use, so importing
compressops never imports triton. Argument checks come from compressops/formats (the functions
the reference and the fake kernels call); these modules never import compressops.reference.
Tests run them on CPU tensors under TRITON_INTERPRET=1 (small shapes).
"""

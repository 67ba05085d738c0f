"""PQ: weight product quantization, inference by table lookup (compressops.nn.PQLinear)."""

from __future__ import annotations

from dataclasses import dataclass

from . import Config


@dataclass(frozen=True)
class PQ(Config, format_name="pq"):
    """Weight product quantization, inference by table lookup (DESIGN.md section 4, formats/pq.py).

    Each weight row is split into subvectors of `subvector_dim` values; every subspace gets a
    k-means codebook of `num_centroids` centroids and each subvector is stored as a code
    (log2(k) bits per d weights, plus the codebooks).

    Args:
        num_centroids: 16 (4-bit codes, the fast-scan kernel) or 256 (8-bit codes).
        subvector_dim: d in (1, 2, 4, 8, 16); K not a multiple of d is zero padded.
        refine: when compressops.convert gets calibration_data, re-fit the codebooks for the fixed
            codes to minimise each layer's output error on it (least squares on the Gram matrix
            X^T X; "And the Bit Goes Down"). Without calibration_data it is plain k-means.
        seed: k-means++ seed.
        max_iter: most Lloyd iterations per layer (stops earlier on convergence).
    """

    num_centroids: int = 256
    subvector_dim: int = 4
    refine: bool = True
    seed: int = 0
    max_iter: int = 25

    def __post_init__(self):
        if self.num_centroids not in (16, 256):
            raise ValueError(f"PQ(num_centroids={self.num_centroids!r}): must be 16 or 256")
        if self.subvector_dim not in (1, 2, 4, 8, 16):
            raise ValueError(f"PQ(subvector_dim={self.subvector_dim!r}): must be one of 1, 2, 4, 8, 16")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"PQ(max_iter={self.max_iter!r}): must be an int >= 1")

    @property
    def uses_calibration(self) -> bool:
        """Calibration data is optional: it only feeds the codebook refinement."""
        return self.refine

"""Algorithms that produce compressed weights: quantizers, observers/calibration, ..."""

"""attnverify: float64 oracles, randomized verification and Triton kernels for attention."""

__version__ = "0.1.0"

"""Randomized verification of attention implementations against the float64 oracles."""

"""Tests of the float64 oracles (attnverify.reference) and their cross-oracle."""

"""Tests of the verifier: planted bugs, false alarms, targets, tolerance, strategies."""

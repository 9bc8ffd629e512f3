"""Measurement: generation, held-out accuracy before/during/after training, preference
metrics and pass@k."""

"""Evaluations of trained checkpoints: held-out loss, HellaSwag."""

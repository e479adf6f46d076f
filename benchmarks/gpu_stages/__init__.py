"""The stages of benchmarks/gpu_check.py, one module each; each runs in its own process."""

"""Datasets fetched from package registries (Debian, npm) for training, evaluation and benchmarks."""

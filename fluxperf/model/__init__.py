"""Synthetic FLUX pipelines, their configs, tokenizers and the one source of example inputs."""

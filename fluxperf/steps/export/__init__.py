"""torch.export + AOTInductor packages, their cache, loader and CUDA-graph runner."""

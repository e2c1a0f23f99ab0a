"""W4A4 quantization core: quantizers, learnable transforms, transform sites."""

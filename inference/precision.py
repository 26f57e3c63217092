"""Which reduced precisions run natively where: one answer for training and for sampling."""

from __future__ import annotations

import torch


def has_native_bf16(device_type: str) -> bool:
    """Whether bf16 autocast gets bf16 kernels here: always on CUDA; on a CPU only where oneDNN supports bf16
    (AVX-512 and newer). On an AVX2-only CPU bf16 is emulated: a bf16 training step ran 11x slower than fp32
    on one such 2-core machine (docs/benchmarks.md), where it is 1.8x faster on an AVX-512 one, and sampling
    the shipped generator 20-36x slower."""
    return device_type != "cpu" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())

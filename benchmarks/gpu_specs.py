"""Peak figures of the GPUs the benchmarks know, by the name CUDA reports.

One home for them: ``roofline.py`` predicts from them, ``bench_common_neighbors.py`` divides its
achieved bandwidth by them. Bandwidths are NVIDIA's datasheet figures; FLOP/s are dense (no
sparsity), ``None`` where no benchmark needs them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPUSpec:
    name: str
    hbm_bytes_per_s: float
    fp32_flops: float | None = None  # CUDA cores, no tensor cores
    bf16_flops: float | None = None  # dense tensor cores


H100_SXM = GPUSpec("H100 SXM", 3.35e12, 67e12, 989e12)  # 1,979 TFLOP/s bf16 with sparsity
H100_PCIE = GPUSpec("H100 PCIe", 2.0e12)
# 790 TFLOP/s bf16 as issue 18 states it; the H200 SXM datasheet's 1,979 with sparsity would be
# about 990 dense. The lower figure keeps H200 predictions conservative where the head bounds them.
H200 = GPUSpec("H200", 4.8e12, 67e12, 790e12)
A100_80GB = GPUSpec("A100 80GB", 2.0e12)


def spec_for(device_name: str) -> GPUSpec | None:
    """The spec of a device named as ``torch.cuda.get_device_name()`` / ``nvidia-smi`` name it
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200", "NVIDIA A100-SXM4-80GB"), or
    ``None`` for one not listed (an H100 NVL or an A100 40GB, for example)."""
    name = device_name.upper()
    if "H200" in name:
        return H200
    if "H100" in name and "PCIE" in name:
        return H100_PCIE
    if "H100" in name and ("SXM" in name or "HBM3" in name):
        return H100_SXM
    if "A100" in name and "80GB" in name:
        return A100_80GB
    return None

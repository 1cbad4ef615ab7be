"""Efficiency benchmarks: latency, peak memory and MACs of attention ops and whole models.

``mirrorla bench ops`` sweeps the token count for every registered attention and PyTorch's
``scaled_dot_product_attention``; ``mirrorla bench models`` sweeps the input resolution of whole
models. Every case runs in a worker process (:mod:`mirrorla.bench.worker`) so that peak memory on
CPU can be read from the kernel (:mod:`mirrorla.bench.memory`) and a case that runs out of memory
cannot take the sweep down with it.
"""

from mirrorla.bench.machine import describe_machine, measure_gemm_peak
from mirrorla.bench.memory import measure_peak_memory
from mirrorla.bench.report import fit_exponent

__all__ = ["describe_machine", "measure_gemm_peak", "measure_peak_memory", "fit_exponent"]

"""XLA flags for GPU training throughput, in one place; the entry points apply them.

From JAX-Toolbox's "Tips for High-Performance LLMs with JAX and XLA" and JAX's GPU
performance tips, the ones that concern a data/FSDP-parallel transformer step:

  latency-hiding scheduler       overlap collectives (FSDP's all-gathers of the next
                                 layer's weights, the reduce-scatters of gradients) with
                                 compute instead of waiting on them
  combine thresholds             merge many small collectives into few large ones (FSDP
                                 makes one per parameter per layer)
  pipelined collectives          start a scanned layer's all-gather in the previous
                                 iteration (with scanned layers, `DecoderConfig.scan_layers`)
  while-loop double buffering    the same for the loop's carried buffers
  combine-by-dim off             lets the combiners merge collectives of different shapes

They change only how XLA compiles for GPUs (other backends parse and ignore them; a CPU
test checks that this jaxlib knows every one, since XLA aborts on an unknown flag). The
entry points (`launch.run`) add them on machines with an NVIDIA driver loaded; values
already in XLA_FLAGS win, and MUSICLM_JAX_GPU_FLAGS=0 leaves XLA_FLAGS untouched.
"""

from __future__ import annotations

import os
import re

# flag -> value (bytes for the thresholds: 128 MiB)
GPU_THROUGHPUT_FLAGS = {
    "xla_gpu_enable_latency_hiding_scheduler": "true",
    "xla_gpu_all_reduce_combine_threshold_bytes": str(128 << 20),
    "xla_gpu_all_gather_combine_threshold_bytes": str(128 << 20),
    "xla_gpu_reduce_scatter_combine_threshold_bytes": str(128 << 20),
    "xla_gpu_enable_pipelined_all_gather": "true",
    "xla_gpu_enable_pipelined_reduce_scatter": "true",
    "xla_gpu_enable_pipelined_all_reduce": "true",
    "xla_gpu_enable_while_loop_double_buffering": "true",
    "xla_gpu_enable_all_gather_combine_by_dim": "false",
    "xla_gpu_enable_reduce_scatter_combine_by_dim": "false",
}
OPT_OUT = "MUSICLM_JAX_GPU_FLAGS"


def merged(existing: str, flags: dict[str, str] = GPU_THROUGHPUT_FLAGS) -> str:
  """`existing` (an XLA_FLAGS string) with the `flags` it does not set appended."""
  present = set(re.findall(r"--([A-Za-z0-9_]+)", existing))
  extra = [f"--{name}={value}" for name, value in flags.items() if name not in present]
  return " ".join([existing.strip()] + extra).strip()


NVIDIA_DRIVER = "/proc/driver/nvidia"


def apply_gpu_flags(environ=os.environ, driver: str = NVIDIA_DRIVER) -> bool:
  """Adds the GPU throughput flags to XLA_FLAGS (call before JAX starts its backends) where
  an NVIDIA driver is loaded and they are not opted out of; returns whether it did."""
  if environ.get(OPT_OUT, "1") == "0" or not os.path.exists(driver):
    return False
  environ["XLA_FLAGS"] = merged(environ.get("XLA_FLAGS", ""))
  return True

"""Multi-process (multi-host) start-up.

On a pod every host runs the same command; `jax.distributed.initialize` connects them and
`jax.devices()` then lists every device of every host. On TPU pods and SLURM clusters the
arguments are discovered automatically; elsewhere pass them explicitly (flags
--coordinator_address, --num_processes, --process_id).
"""

from __future__ import annotations

from typing import Optional

import jax
from absl import logging


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, cpu_collectives: Optional[str] = None,
               auto: bool = False) -> None:
  """Connects this process to the others (no-op for a single-process run).

  Args:
    coordinator_address: 'host:port' of process 0.
    num_processes, process_id: the job's size and this process's rank.
    cpu_collectives: 'gloo' (or 'mpi') for multi-process CPU runs.
    auto: call `jax.distributed.initialize()` with cluster auto-detection (TPU pods, SLURM,
      Open MPI) when no address is given.
  """
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  if coordinator_address is None and not auto:
    return
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise ValueError("--coordinator_address needs --num_processes and --process_id")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())

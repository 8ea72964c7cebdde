"""Accelerator facts the compile report needs: memory per chip and peak bf16 FLOP/s.

Numbers from the vendors' spec pages (Cloud TPU "System architecture" pages
for v4 / v5e / v5p / v6e; NVIDIA data sheets, dense bf16 without sparsity).
Keys are the prefixes of `jax.experimental.topologies` names ('v5e:2x4').
"""

from __future__ import annotations

import dataclasses

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int          # memory of one chip (one jax device)
  peak_bf16_flops: float  # per chip, per second
  device_kind: str        # jax's `device.device_kind`


CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, "TPU v4"),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, "TPU v5 lite"),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, "TPU v5"),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12, "TPU v6 lite"),
    # GPUs: for reading a report compiled on a GPU host (see README).
    "a100-80gb": Chip("NVIDIA A100 80GB", 80 * GiB, 312e12, "NVIDIA A100-SXM4-80GB"),
    "h100": Chip("NVIDIA H100 SXM", 80 * GiB, 989e12, "NVIDIA H100 80GB HBM3"),
}


def chip_of_topology(topology: str) -> Chip:
  """The chip of a topology name such as 'v5e:2x4' or 'v4:2x2x1'."""
  kind = topology.split(":", 1)[0].lower()
  tpus = sorted(k for k in CHIPS if k.startswith("v"))
  if kind not in tpus:
    raise ValueError(f"topology {topology!r}: unknown TPU {kind!r}; valid choices: {tpus} "
                     "(e.g. 'v5e:2x4', 'v4:2x2x1')")
  return CHIPS[kind]


def chip_of_device(device) -> Chip:
  """The chip of a real device (`jax.devices()[0]`), by its `device_kind`."""
  for chip in CHIPS.values():
    if chip.device_kind == device.device_kind:
      return chip
  raise ValueError(f"device kind {device.device_kind!r} is not in the chip table; known: "
                   f"{sorted(c.device_kind for c in CHIPS.values())} (experiment/chips.py)")

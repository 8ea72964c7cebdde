"""Which JAX platforms `run.py` asks for, decided before jax or TensorFlow start.

libtpu (installed by `jax[tpu]`, which the compile stage and its test need)
makes a TPU backend start-up attempt on any host once TensorFlow has been
imported; on a host without a TPU that prints "Failed to find host bounds for
accelerator type" and "unexpected worker hostname" and then falls back to the
CPU. `run.py` therefore sets `JAX_PLATFORMS=cpu` when, and only when, nothing
else could be meant: the variable is unset, libtpu is installed, and the
host has neither a TPU (a PCI device of Google's vendor id, jax's own test in
`cloud_tpu_init`, or a /dev/accel* node) nor a visible NVIDIA GPU. The
compile stage is unaffected: it compiles for abstract TPU devices under
`JAX_PLATFORMS=cpu` anyway. No jax import here.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import Mapping, MutableMapping, Optional

GOOGLE_PCI_VENDOR = "0x1ae0"
NVIDIA_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")  # jax's own list


def tpu_attached(sys_root: str = "/sys", dev_root: str = "/dev") -> bool:
  """True if a TPU chip is attached: a Google PCI device, or a /dev/accel* node."""
  for vendor in glob.glob(os.path.join(sys_root, "bus", "pci", "devices", "*", "vendor")):
    with open(vendor) as f:
      if f.read().strip() == GOOGLE_PCI_VENDOR:
        return True
  return bool(glob.glob(os.path.join(dev_root, "accel*")))


def nvidia_gpu_visible() -> bool:
  return any(os.path.exists(d) for d in NVIDIA_DEVICES)


def choose_platforms(environ: Mapping[str, str], libtpu_installed: bool, tpu: bool,
                     nvidia_gpu: bool) -> Optional[str]:
  """'cpu' when libtpu is installed on a host with no accelerator and no choice was made.

  None means: leave jax's own choice (the user set JAX_PLATFORMS, or a TPU or
  GPU is there, or without libtpu nothing prints).
  """
  if "JAX_PLATFORMS" in environ or not libtpu_installed or tpu or nvidia_gpu:
    return None
  return "cpu"


def configure(environ: Optional[MutableMapping[str, str]] = None) -> Optional[str]:
  """Sets `environ['JAX_PLATFORMS']` per `choose_platforms` (call before importing jax)."""
  environ = os.environ if environ is None else environ
  choice = choose_platforms(environ, importlib.util.find_spec("libtpu") is not None,
                            tpu_attached(), nvidia_gpu_visible())
  if choice is not None:
    environ["JAX_PLATFORMS"] = choice
  return choice

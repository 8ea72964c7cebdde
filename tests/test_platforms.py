"""run.py's platform choice: JAX_PLATFORMS=cpu only on a host with libtpu and no accelerator."""

from __future__ import annotations

import pytest

from mhr_jax import platforms


@pytest.mark.parametrize("environ, libtpu, tpu, gpu, expected", [
    ({}, True, False, False, "cpu"),                        # CPU host with jax[tpu]: quiet
    ({"JAX_PLATFORMS": ""}, True, False, False, None),      # the user's choice, even empty
    ({"JAX_PLATFORMS": "tpu"}, True, False, False, None),
    ({}, True, True, False, None),                          # a TPU VM: jax picks the TPU
    ({}, True, False, True, None),                          # a GPU host
    ({}, False, False, False, None),                        # no libtpu: nothing to silence
])
def test_choose_platforms(environ, libtpu, tpu, gpu, expected):
  assert platforms.choose_platforms(environ, libtpu, tpu, gpu) == expected


def _pci_device(root, name, vendor):
  d = root / "bus" / "pci" / "devices" / name
  d.mkdir(parents=True)
  (d / "vendor").write_text(vendor + "\n")


def test_tpu_attached_reads_pci_vendors_and_accel_nodes(tmp_path):
  sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
  dev_root.mkdir()
  _pci_device(sys_root, "0000:00:04.0", "0x8086")  # an Intel bridge
  assert not platforms.tpu_attached(str(sys_root), str(dev_root))
  (dev_root / "accel0").touch()                      # TPU v4 / v5e VMs
  assert platforms.tpu_attached(str(sys_root), str(dev_root))
  (dev_root / "accel0").unlink()
  _pci_device(sys_root, "0000:00:05.0", platforms.GOOGLE_PCI_VENDOR)  # v5p / v6e (vfio)
  assert platforms.tpu_attached(str(sys_root), str(dev_root))


def test_configure_sets_the_choice_and_keeps_a_users(monkeypatch):
  monkeypatch.setattr(platforms, "tpu_attached", lambda: False)
  monkeypatch.setattr(platforms.importlib.util, "find_spec", lambda name: object())
  monkeypatch.setattr(platforms, "nvidia_gpu_visible", lambda: False)
  environ = {}
  assert platforms.configure(environ) == "cpu" and environ == {"JAX_PLATFORMS": "cpu"}
  environ = {"JAX_PLATFORMS": "cuda"}
  assert platforms.configure(environ) is None and environ == {"JAX_PLATFORMS": "cuda"}

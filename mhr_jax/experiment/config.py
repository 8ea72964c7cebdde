"""The gin-configurable settings shared by the stages: mesh and data.

Importing this module registers them (and the model, adapter and optimizer
configs) with gin under the `mhr_jax.` prefix.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import gin

from mhr_jax import partitioning
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.models import T5Config
from mhr_jax.training.optimizer import OptimizerConfig

gin.external_configurable(T5Config, module="mhr_jax")
gin.external_configurable(AdapterConfig, module="mhr_jax")
gin.external_configurable(OptimizerConfig, module="mhr_jax")


@gin.configurable(module="mhr_jax")
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh `data` x `model` (-1 = all remaining devices) and its axis rules.

  `logical_axis_rules`: (logical name, mesh axis or None) pairs; the default
  is `partitioning.DEFAULT_RULES`. In gin, e.g.
  `mhr_jax.MeshConfig.logical_axis_rules = [('mlp', 'model'), ('vocab', None)]`.
  `topology` names the TPU slice ('v5e:2x4') the `compile` stage compiles for
  (experiment/compile.py); the training stages use the devices they find.
  """
  data: int = -1
  model: int = 1
  logical_axis_rules: tuple = partitioning.DEFAULT_RULES
  topology: Optional[str] = None
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None

  def build(self) -> partitioning.Partitioner:
    """Joins the distributed job (if configured) and returns the stage's Partitioner."""
    partitioning.maybe_initialize_distributed(self.coordinator_address, self.num_processes,
                                              self.process_id)
    return partitioning.Partitioner(partitioning.make_mesh(data=self.data, model=self.model),
                                    self.logical_axis_rules)


@gin.configurable(module="mhr_jax")
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What the model reads: sequence lengths, batch size, vocabulary."""
  input_length: int = 32
  target_length: int = 32
  batch_size: int = 32
  eval_batch_size: int = 64  # rounded up to a multiple of the mesh's 'data' size
  vocabulary: str = "byte"  # 'byte' | 'checkpoint' | 'sentencepiece'

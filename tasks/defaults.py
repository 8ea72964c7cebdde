"""What `import tasks` registers: every family whose data is available locally."""

from __future__ import annotations

import logging
from typing import Optional

import seqio

from tasks import bigbench, natural_instructions, p3, registry, t0
from tasks.synthetic import SyntheticSpec, register_synthetic

log = logging.getLogger(__name__)


def register_defaults(vocabulary: Optional[seqio.Vocabulary] = None) -> list[str]:
  """Registers synthetic and T0 always, BIG-bench, Super-NaturalInstructions and P3 when
  their local data exist. Idempotent. Returns the registered family names."""
  names = [register_synthetic(SyntheticSpec(), vocabulary).name,
           t0.register_t0(vocabulary=vocabulary).name]
  if bigbench.available():
    names.append(bigbench.register_bigbench(vocabulary=vocabulary).name)
  else:
    registry.note_missing_data(bigbench.FAMILY + "_", bigbench.missing_data_message())
  if natural_instructions.available():
    names.append(natural_instructions.register_natural_instructions(vocabulary=vocabulary).name)
  if p3.available():
    names.append(p3.register_p3(vocabulary=vocabulary).name)
  return names

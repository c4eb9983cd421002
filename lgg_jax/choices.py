"""Settings that take one of a few names: one check, one error message."""

from __future__ import annotations

# Inference names, here (a leaf module) so that command-line flags can list
# them without importing the steps, models and optimizers.
TTA_MODES = ("none", "flips", "dihedral")
COMPONENT_RANKS = ("volume", "probability_sum", "probability_max")


def check(setting: str, value, allowed) -> None:
  """Raises ValueError naming the setting, the bad value and the known values."""
  if value not in allowed:
    raise ValueError(f"{setting}: unknown value {value!r} (known: {', '.join(map(str, allowed))})")

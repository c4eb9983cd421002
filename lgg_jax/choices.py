"""Settings that take one of a few names: one check, one error message."""

from __future__ import annotations

# Here (a leaf module) so that command-line flags can list them without
# importing inference. Parts built by name are in registry.py.
COMPONENT_RANKS = ("volume", "probability_sum", "probability_max")


def check(setting: str, value, allowed) -> None:
  """Raises ValueError naming the setting, the bad value and the known values."""
  if value not in allowed:
    raise ValueError(f"{setting}: unknown value {value!r} (known: {', '.join(map(str, allowed))})")

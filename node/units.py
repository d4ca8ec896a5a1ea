# Moved to cluster/units.py (the operator parses durations too); this goes when node/config.py imports it from there.
from cluster.units import parse_duration, parse_size

__all__ = ["parse_duration", "parse_size"]

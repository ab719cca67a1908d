"""The synthetic region: a seeded procedural landscape of southern Quebec, the embedded default source."""

from pyrocast.data.synthetic.region import SyntheticRegion

__all__ = ["SyntheticRegion"]

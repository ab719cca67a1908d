"""The synthetic region: a seeded procedural landscape of southern Quebec, the embedded default source.

`SyntheticRegion` renders zoom-15 tiles, web-map tiles and a CWFIS-style fire feed, and knows the ground
truth label of every place; `render_into` fills the dataset with its tiles.
"""

from pyrocast.data.synthetic.dataset import render_into
from pyrocast.data.synthetic.region import SyntheticRegion
from pyrocast.data.synthetic.scenarios import SCENARIOS

__all__ = ["SCENARIOS", "SyntheticRegion", "render_into"]

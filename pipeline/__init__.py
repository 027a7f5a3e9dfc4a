"""Data side of ddn: datasets, splits, proposals, combinatorial crops, shards, readers.

It imports nothing from `ddn` (the method side) or `cli`: the layers go one way,
cli -> ddn -> pipeline. The version lives here because the shards and manifests this
side writes record it; `ddn.__version__` and the package metadata read it from here.
"""

__version__ = "0.1.0"

"""Data side of ddn: datasets, splits, proposals, combinatorial crops, shards, readers."""

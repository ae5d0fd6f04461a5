"""Data: TFDS builders, the generated demo data set, captions, transforms and Grain pipelines."""

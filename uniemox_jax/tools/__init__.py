"""Command-line tools: ``prepare`` (data sets → TFDS array_record)."""

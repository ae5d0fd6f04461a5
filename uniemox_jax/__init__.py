"""UniEmoX in JAX: pre-training for visual emotion perception."""

__version__ = "0.1.0"

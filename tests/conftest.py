"""Shared test setup: no network, one CPU device (sharding tests spawn their own process),
a persistent compilation cache, and a small generated data + teacher environment."""
import dataclasses
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same small steps; a persistent cache makes the repeats cheap.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"uniemox-test-jax-cache-"
                                   f"py{sys.version_info.major}{sys.version_info.minor}"))
os.makedirs(os.environ["JAX_COMPILATION_CACHE_DIR"], exist_ok=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class DemoEnv:
  """A tiny EmoSet + emo8 look-alike prepared as TFDS data, and a tiny random CLIP teacher."""
  root: str
  raw: str
  tfds: str
  clip: str


def build_demo_env(root: str, per_class=(3, 1, 1), clip_image_size: int = 32) -> DemoEnv:
  from uniemox_jax.data import builders, demo
  from uniemox_jax.tools import tiny_clip
  raw, tfds_dir, clip_dir = (os.path.join(root, n) for n in ("raw", "tfds", "tiny_clip"))
  demo.write_emoset(os.path.join(raw, "EmoSet"), seed=0, per_class=per_class,
                    image_size=(64, 48))
  demo.write_benchmark(os.path.join(raw, "benchmarks"), "emo8", seed=0, per_class=per_class,
                       image_size=(64, 48))
  builders.prepare("emoset", os.path.join(raw, "EmoSet"), tfds_dir,
                   person_boxes=os.path.join(raw, "EmoSet", "person_boxes.json"))
  builders.prepare("emotion_folder/emo8", os.path.join(raw, "benchmarks"), tfds_dir)
  tiny_clip.make_tiny_clip(clip_dir, tiny_clip.emoset_captions(os.path.join(raw, "EmoSet")),
                           image_size=clip_image_size)
  return DemoEnv(root, raw, tfds_dir, clip_dir)


@pytest.fixture(scope="session")
def demo_env(tmp_path_factory) -> DemoEnv:
  return build_demo_env(str(tmp_path_factory.mktemp("demo_env")))


# Modules that need PyTorch at import are not collected where it is not installed (Python
# 3.12 here); their tests carry the `torch` marker, and CI deselects that marker there.
try:
  import torch  # noqa: F401
except ImportError:
  collect_ignore = ["test_mae_parity.py"]

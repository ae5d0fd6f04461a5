"""TFDS builders for EmoSet-118K and the six fine-tuning benchmarks (docs/method.md §5).

Importing this package registers ``emoset`` and ``emotion_folder`` (configs ``emo8``, ``fi``,
``emotion6``, ``unbiasedemo``, ``caer_s``, ``heco``) with TFDS. Data is prepared once from a
manual directory into array_record files and read with random access, without TensorFlow::

  from uniemox_jax.data import builders
  builders.prepare('emoset', manual_dir='/data/EmoSet-118K', data_dir='/data/tfds',
                   person_boxes='/data/EmoSet-118K/person_boxes.json')
  source = builders.load_source('emoset', 'train+val', data_dir='/data/tfds')
  source[0]['image']      # JPEG bytes;  source[0]['caption']  # str

or from the shell: ``python -m uniemox_jax.tools.prepare --dataset=emoset ...``.

At prepare time every image is decoded once; bad files (missing, empty, truncated, not an
image) fail the preparation with the full list, or with ``skip_bad_images=True`` are left out
and listed in ``<data_dir>/<name>/[<config>/]<version>/bad_images.json``.
"""
from uniemox_jax.data.builders.api import DATASETS
from uniemox_jax.data.builders.api import DatasetNotPreparedError
from uniemox_jax.data.builders.api import TextDecodedSource
from uniemox_jax.data.builders.api import canonical_name
from uniemox_jax.data.builders.api import ensure_absl_flags
from uniemox_jax.data.builders.api import get_builder
from uniemox_jax.data.builders.api import is_prepared
from uniemox_jax.data.builders.api import load_source
from uniemox_jax.data.builders.api import prepare
from uniemox_jax.data.builders.api import prepare_command
from uniemox_jax.data.builders.base import REPORT_NAME
from uniemox_jax.data.builders.base import ManualDirError
from uniemox_jax.data.builders.emoset import Emoset
from uniemox_jax.data.builders.emotion_folder import EmotionFolder
from uniemox_jax.data.builders.emotion_folder import EmotionFolderConfig
from uniemox_jax.data.builders.images import BadImage
from uniemox_jax.data.builders.images import BadImagesError
from uniemox_jax.data.builders.person_boxes import FilePersonBoxes
from uniemox_jax.data.builders.person_boxes import NoPersonBoxes
from uniemox_jax.data.builders.person_boxes import PersonBoxes
from uniemox_jax.data.builders.person_boxes import make_person_boxes
from uniemox_jax.data.builders.person_boxes import normalise_box

__all__ = [
    "DATASETS", "DatasetNotPreparedError", "TextDecodedSource", "canonical_name",
    "ensure_absl_flags", "get_builder", "is_prepared", "load_source", "prepare",
    "prepare_command", "REPORT_NAME", "ManualDirError", "Emoset", "EmotionFolder",
    "EmotionFolderConfig", "BadImage", "BadImagesError", "FilePersonBoxes", "NoPersonBoxes",
    "PersonBoxes", "make_person_boxes", "normalise_box",
]

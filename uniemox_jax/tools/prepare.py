r"""Prepares a data set once, from the files a user downloaded, into a TFDS data directory.

  python -m uniemox_jax.tools.prepare --dataset=emoset --manual_dir=/data/EmoSet-118K \
      --data_dir=/data/tfds [--person_boxes=/data/emoset_person_boxes.json] [--skip_bad_images]
  python -m uniemox_jax.tools.prepare --dataset=emotion_folder/emo8 --manual_dir=/data/benchmarks \
      --data_dir=/data/tfds

Datasets: ``emoset`` and ``emotion_folder/{emo8,fi,emotion6,unbiasedemo,caer_s,heco}`` (a
benchmark's name alone, ``--dataset=emo8``, works too). What ``--manual_dir`` must hold is in
each builder's ``MANUAL_DOWNLOAD_INSTRUCTIONS``, which the error prints when something is
missing, before anything is written. Every image is decoded once; bad files fail the run with
their list unless ``--skip_bad_images`` (then they are listed in ``bad_images.json`` next to
the prepared data). Running it again on prepared data reuses it.

The library functions :func:`prepare` and :func:`load_source` are re-exported here; data code
imports them from :mod:`uniemox_jax.data.builders` (data must not import tools).
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

from absl import app
from absl import flags

from uniemox_jax.data.builders import DATASETS
from uniemox_jax.data.builders import BadImagesError
from uniemox_jax.data.builders import ManualDirError
from uniemox_jax.data.builders import REPORT_NAME
from uniemox_jax.data.builders import canonical_name
from uniemox_jax.data.builders import get_builder
from uniemox_jax.data.builders import is_prepared
from uniemox_jax.data.builders import load_source
from uniemox_jax.data.builders import prepare

__all__ = ['prepare', 'load_source', 'main']

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program: importing this module for `prepare` must not add
  # flags that could collide with a training script's.
  flags.DEFINE_string('dataset', None, f'One of {", ".join(DATASETS)}.', required=True)
  flags.DEFINE_string('manual_dir', None,
                      'Directory with the downloaded data: the EmoSet-118K root, or the '
                      'directory that holds the benchmark folders (emo8/, FI/, ...). A wrong '
                      'layout fails at once with the expected one.', required=True)
  flags.DEFINE_string('data_dir', None, 'TFDS data directory to write to.', required=True)
  flags.DEFINE_string('person_boxes', None,
                      'EmoSet only: person detections, JSON {image_id: [{"box": [x0, y0, x1, '
                      'y1], "score": s, "label": "person"}]} or CSV '
                      'image_id,x0,y0,x1,y1,score[,label] (pixels).')
  flags.DEFINE_float('min_person_score', 0.8,
                     'EmoSet only: confidence a person box needs to be kept.')
  flags.DEFINE_bool('skip_bad_images', False,
                    'Leave out unreadable images (listed in bad_images.json) instead of '
                    'failing with their list.')
  flags.DEFINE_integer('num_workers', None,
                       'Processes that decode-check images (default: CPUs, at most 16).')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    dataset = canonical_name(FLAGS.dataset)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  options = dict(skip_bad_images=FLAGS.skip_bad_images, num_workers=FLAGS.num_workers)
  if dataset == 'emoset':
    options.update(person_boxes=FLAGS.person_boxes, min_person_score=FLAGS.min_person_score)
  elif FLAGS.person_boxes:
    raise app.UsageError('--person_boxes is only used with --dataset=emoset.')
  t0 = time.perf_counter()
  reused = is_prepared(get_builder(dataset, FLAGS.data_dir))
  try:
    builder = prepare(dataset, FLAGS.manual_dir, FLAGS.data_dir, **options)
  except (ManualDirError, BadImagesError) as e:
    # The user's data, not our code, is wrong: the message says what to do; no traceback.
    sys.exit(f'{type(e).__name__}: {e}')
  seconds = time.perf_counter() - t0
  print(f'{builder.info.full_name}: {"reused" if reused else "prepared"} in {seconds:.1f} s '
        f'-> {builder.data_dir}')
  for name, split in builder.info.splits.items():
    print(f'  {name:6s} {split.num_examples:8d} examples')
  report = os.path.join(builder.data_dir, REPORT_NAME)
  if os.path.exists(report):
    with open(report) as f:
      bad = len(json.load(f).get('bad_images', []))
    print(f'  bad images left out: {bad} (report: {report})')


if __name__ == '__main__':
  _define_flags()
  app.run(main)

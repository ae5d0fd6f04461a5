r"""Prepares a data set once, from the files a user downloaded, into a TFDS data directory.

  python -m uniemox_jax.tools.prepare --dataset=emoset --manual_dir=/data/EmoSet-118K \
      --data_dir=/data/tfds [--person_boxes=/data/emoset_person_boxes.json] [--skip_bad_images]
  python -m uniemox_jax.tools.prepare --dataset=emotion_folder/emo8 --manual_dir=/data/benchmarks \
      --data_dir=/data/tfds
  python -m uniemox_jax.tools.prepare --dataset=emoset --manual_dir=/data/EmoSet-118K \
      --data_dir=/data/tfds --person_boxes=yolov3 --yolo_weights=/data/yolo/yolov3.weights \
      [--yolo_cfg=/data/yolo/yolov3.cfg] [--detector_batch=64]

Datasets: ``emoset`` and ``emotion_folder/{emo8,fi,emotion6,unbiasedemo,caer_s,heco}`` (a
benchmark's name alone, ``--dataset=emo8``, works too). What ``--manual_dir`` must hold is in
each builder's ``MANUAL_DOWNLOAD_INSTRUCTIONS``, which the error prints when something is
missing, before anything is written. Every image is decoded once; bad files fail the run with
their list unless ``--skip_bad_images`` (then they are listed in ``bad_images.json`` next to
the prepared data). Running it again on prepared data reuses it.

Person boxes (every data set): ``--person_boxes=FILE`` reads detections made elsewhere;
``--person_boxes=yolov3`` first runs the built-in YOLOv3 over every image
(:mod:`uniemox_jax.tools.detect`: the default JAX device, resumable, a summary at the end)
and writes ``<data_dir>/person_boxes/<dataset>.yolov3.json``, which is then read like FILE.

The library functions :func:`prepare` and :func:`load_source` are re-exported here; data code
imports them from :mod:`uniemox_jax.data.builders` (data must not import tools).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
import tensorflow_datasets as tfds

from uniemox_jax import errors
from uniemox_jax.data.builders import DATASETS
from uniemox_jax.data.builders import BadImagesError
from uniemox_jax.data.builders import ManualDirError
from uniemox_jax.data.builders import REPORT_NAME
from uniemox_jax.data.builders import canonical_name
from uniemox_jax.data.builders import get_builder
from uniemox_jax.data.builders import is_prepared
from uniemox_jax.data.builders import load_source
from uniemox_jax.data.builders import prepare
from uniemox_jax.data.builders.base import ARRAY_RECORD
from uniemox_jax.data.builders.emotion_folder import EmotionFolder

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
                      'Person detections, JSON {image_id: [{"box": [x0, y0, x1, '
                      'y1], "score": s, "label": "person"}]} or CSV '
                      'image_id,x0,y0,x1,y1,score[,label] (pixels); or "yolov3" to detect '
                      'them with the built-in YOLOv3 (needs --yolo_weights).')
  flags.DEFINE_float('min_person_score', 0.8,
                     'Confidence a person box needs to be kept (also the detector\'s '
                     'threshold with --person_boxes=yolov3).')
  flags.DEFINE_string('yolo_weights', None,
                      'With --person_boxes=yolov3: Darknet yolov3.weights (COCO), from the '
                      'Darknet release; nothing is downloaded.')
  flags.DEFINE_string('yolo_cfg', None,
                      'With --person_boxes=yolov3: a Darknet cfg for the weights (default: '
                      'our YOLOv3, the network of Darknet\'s yolov3.cfg, 416 px).')
  flags.DEFINE_integer('detector_batch', 64,
                       'With --person_boxes=yolov3: images per detector call.')
  flags.DEFINE_integer('detector_size', 416,
                       'With --person_boxes=yolov3: network input size in pixels, a multiple '
                       'of 32 (the paper\'s 416; the cfg\'s width/height are not used).')
  flags.DEFINE_enum('detector_input', 'letterbox', ['letterbox', 'squash'],
                    'With --person_boxes=yolov3: letterbox (aspect kept, grey padding, as '
                    'Darknet) or squash (plain resize, as the released code\'s wrapper).')
  flags.DEFINE_bool('skip_bad_images', False,
                    'Leave out unreadable images (listed in bad_images.json) instead of '
                    'failing with their list.')
  flags.DEFINE_integer('num_workers', None,
                       'Processes that decode-check images (default: CPUs, at most 16).')


DETECTOR = 'yolov3'   # --person_boxes value that runs the built-in detector


def prepare_with_boxes(dataset: str, manual_dir: str, data_dir: str, person_boxes: str,
                       min_person_score: float, **options) -> tfds.core.DatasetBuilder:
  """A benchmark prepared with person boxes (``builders.prepare`` takes boxes for EmoSet
  only, so the builder is made here with the same steps)."""
  family, _, config = canonical_name(dataset).partition('/')
  assert family == 'emotion_folder', dataset
  kwargs = {k: v for k, v in options.items() if v is not None}
  builder = EmotionFolder(data_dir=os.path.expanduser(data_dir), config=config,
                          manual_dir=manual_dir, person_boxes=person_boxes,
                          min_person_score=min_person_score, **kwargs)
  if is_prepared(builder):
    logging.info('%s is already prepared in %s; reusing it.', builder.info.full_name,
                 builder.data_dir)
    return builder
  builder.validate_manual_dir()
  builder.download_and_prepare(
      file_format=ARRAY_RECORD,
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def _detect(dataset: str, reused: bool) -> str:
  """Runs (or reuses) the YOLOv3 pass and returns the boxes file it wrote."""
  from uniemox_jax.tools import detect   # jax and the model only when detecting
  from uniemox_jax.weights import darknet
  path = detect.default_boxes_path(FLAGS.data_dir, dataset)
  if reused:
    print(f'{dataset} is already prepared; not detecting again (boxes: {path}).')
    return os.fspath(path)
  try:
    path, summary = detect.detect_dataset(
        dataset, FLAGS.manual_dir, FLAGS.data_dir, weights=FLAGS.yolo_weights,
        cfg=FLAGS.yolo_cfg, size=FLAGS.detector_size, batch=FLAGS.detector_batch,
        mode=FLAGS.detector_input,
        min_score=FLAGS.min_person_score, boxes_path=path)
  except (darknet.DarknetError, FileNotFoundError, ManualDirError) as e:
    errors.fail(f'{type(e).__name__}: {e}', errors.EXIT_USER_ERROR)
  print(f'person boxes (YOLOv3) -> {path}')
  for line in detect.format_summary(summary).splitlines():
    print(f'  {line}')
  return os.fspath(path)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    dataset = canonical_name(FLAGS.dataset)
  except ValueError as e:
    raise app.UsageError(f'--dataset={FLAGS.dataset}: {e}') from None
  options = dict(skip_bad_images=FLAGS.skip_bad_images, num_workers=FLAGS.num_workers)
  detector = FLAGS.person_boxes == DETECTOR
  if not detector:
    for name in ('yolo_weights', 'yolo_cfg'):
      if FLAGS[name].value:
        raise app.UsageError(f'--{name} is only used with --person_boxes={DETECTOR}.')
  if detector and not FLAGS.yolo_weights:
    raise app.UsageError(f'--person_boxes={DETECTOR} needs --yolo_weights=PATH (yolov3.weights '
                         'of the Darknet release; nothing is downloaded).')
  if FLAGS.person_boxes and not detector and not os.path.isfile(FLAGS.person_boxes):
    raise app.UsageError(f'--person_boxes={FLAGS.person_boxes!r} does not exist: pass the '
                         'JSON or CSV file of person detections, "yolov3" to detect them, or '
                         'leave the flag out (every person view is then the whole image)')
  t0 = time.perf_counter()
  reused = is_prepared(get_builder(dataset, FLAGS.data_dir))
  person_boxes = FLAGS.person_boxes
  if detector:
    person_boxes = _detect(dataset, reused)
  try:
    if person_boxes and dataset != 'emoset':
      builder = prepare_with_boxes(dataset, FLAGS.manual_dir, FLAGS.data_dir, person_boxes,
                                   FLAGS.min_person_score, **options)
    else:
      if dataset == 'emoset':
        options.update(person_boxes=person_boxes, min_person_score=FLAGS.min_person_score)
      builder = prepare(dataset, FLAGS.manual_dir, FLAGS.data_dir, **options)
  except (ManualDirError, BadImagesError) as e:
    # The user's data, not our code, is wrong: the message says what to do; no traceback.
    errors.fail(f'{type(e).__name__}: {e}', errors.EXIT_USER_ERROR)
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
  # Flag and user errors end with one `error: ...` line and exit code 2 (uniemox_jax.errors).
  errors.run_cli(main, user_errors=(ManualDirError, BadImagesError))

"""The prepare-time person detection pass (`--person_boxes=yolov3`) on the demo EmoSet and emo8
look-alikes, with a random-weight tiny YOLOv3 written in the Darknet format: the prepare
command end to end, the stored boxes, and kill-and-rerun giving the same boxes file."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_yolo import tiny_arch, write_files
from uniemox_jax.data import builders, demo
from uniemox_jax.data.classes import SPLITS
from uniemox_jax.tools import detect
from uniemox_jax.tools import prepare as prepare_tool
from uniemox_jax.weights import darknet

REPO = Path(__file__).resolve().parents[1]
MIN_SCORE = 0.5    # random weights score around 0.5: this keeps a mix of images with/without
BATCH = 4
SIZE = 96          # the detector input (the tiny cfg's width; the default is YOLOv3's 416)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('detect')
  emoset = demo.write_emoset(tmp / 'raw' / 'EmoSet', per_class=(2, 1, 1), image_size=(64, 48))
  demo.write_benchmark(tmp / 'raw' / 'benchmarks', 'emo8', per_class=(1, 1, 1),
                       image_size=(64, 48))
  cfg, weights = write_files(tmp, tiny_arch(classes=1), seed=3, name='yolo')
  # The prepare command, as a user runs it.
  data_dir = tmp / 'tfds'
  cmd = [sys.executable, '-m', 'uniemox_jax.tools.prepare', '--dataset=emoset',
         f'--manual_dir={emoset["root"]}', f'--data_dir={data_dir}', '--person_boxes=yolov3',
         f'--yolo_weights={weights}', f'--yolo_cfg={cfg}', f'--detector_batch={BATCH}',
         f'--detector_size={SIZE}', f'--min_person_score={MIN_SCORE}']
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu', HF_HUB_OFFLINE='1')
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  return dict(tmp=tmp, emoset=emoset, cfg=cfg, weights=weights, data_dir=data_dir, proc=proc,
              bench_root=tmp / 'raw' / 'benchmarks')


def _records(dataset, data_dir):
  out = {}
  for split in SPLITS:
    src = builders.load_source(dataset, split, data_dir)
    out.update({src[i]['image_id']: src[i] for i in range(len(src))})
  return out


def _check_stored_boxes(records, boxes, min_score):
  """Every record's person fields are the best detection of the boxes file, normalised."""
  with_person = 0
  for image_id, r in records.items():
    assert r['person_box'].shape == (4,) and r['person_box'].dtype == np.float32
    dets = [d for d in boxes[image_id] if d['score'] >= min_score and d['label'] == 'person']
    if not dets:
      assert not r['has_person'] and r['person_score'] == 0 and not r['person_box'].any()
      continue
    with_person += 1
    best = max(dets, key=lambda d: d['score'])
    x0, y0, x1, y1 = best['box']
    h, w = r['height'], r['width']
    assert r['has_person'] and r['person_score'] == pytest.approx(best['score'])
    np.testing.assert_allclose(r['person_box'] * [h, w, h, w], [y0, x0, y1, x1], atol=1e-3)
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
  return with_person


def test_prepare_with_yolov3_detects_and_stores_person_boxes(env):
  proc = env['proc']
  assert proc.returncode == 0, proc.stderr[-4000:]
  boxes_path = detect.default_boxes_path(env['data_dir'], 'emoset')
  assert f'person boxes (YOLOv3) -> {boxes_path}' in proc.stdout
  assert 'images: 32, with a person (score >= 0.5):' in proc.stdout
  assert 'best person score per image: min' in proc.stdout and 'histogram: 0.50-0.60' in proc.stdout
  assert 'images/s' in proc.stderr    # the progress/timing lines
  boxes = json.loads(boxes_path.read_text())
  records = _records('emoset', env['data_dir'])
  assert sorted(boxes) == sorted(records)     # every image, [] when it has no person
  with_person = _check_stored_boxes(records, boxes, MIN_SCORE)
  assert 0 < with_person < len(records)
  assert any(len(v) > 1 for v in boxes.values())   # the best of several was chosen
  summary = json.loads(boxes_path.with_name(boxes_path.name + '.run.json').read_text())['summary']
  assert summary['images'] == 32 and summary['with_person'] == with_person
  assert not boxes_path.with_name(boxes_path.name + '.parts').exists()
  info = builders.get_builder('emoset', env['data_dir']).info
  assert info.metadata['prepare']['person_boxes'] == os.fspath(boxes_path)


def test_killed_detection_resumes_to_the_same_boxes_file(env, tmp_path):
  kw = dict(weights=env['weights'], cfg=env['cfg'], size=SIZE, batch=BATCH, chunk_batches=2,
            min_score=MIN_SCORE)
  root = env['emoset']['root']
  whole, _ = detect.detect_dataset('emoset', root, tmp_path, boxes_path=tmp_path / 'a.json', **kw)

  class Killed(Exception):
    pass

  def kill_after(end):
    if end >= 16:
      raise Killed(end)

  target = tmp_path / 'b.json'
  with pytest.raises(Killed):
    detect.detect_dataset('emoset', root, tmp_path, boxes_path=target, on_chunk=kill_after, **kw)
  parts = tmp_path / 'b.json.parts'
  assert sorted(p.name for p in parts.glob('chunk_*')) == [
      'chunk_000000000_000000008.json', 'chunk_000000008_000000016.json']
  assert not target.exists()
  # A kill while a chunk was being written leaves its temporary file: ignored on resume.
  (parts / 'chunk_000000016_000000024.json.tmp999').write_text('{"start": 16, "images": [')
  resumed = []
  detect.detect_dataset('emoset', root, tmp_path, boxes_path=target,
                        on_chunk=resumed.append, **kw)
  assert resumed == [24, 32]                  # only the missing chunks were detected
  assert target.read_bytes() == whole.read_bytes()
  # The prepare command's file (other chunking, same batches) is the same too.
  assert whole.read_bytes() == detect.default_boxes_path(env['data_dir'], 'emoset').read_bytes()
  # Done: a rerun reuses the file; other settings detect again.
  again = []
  detect.detect_dataset('emoset', root, tmp_path, boxes_path=target, on_chunk=again.append, **kw)
  assert again == []
  detect.detect_dataset('emoset', root, tmp_path, boxes_path=target, on_chunk=again.append,
                        **{**kw, 'min_score': 0.55})
  assert again == [8, 16, 24, 32]
  boxes = json.loads(target.read_text())
  assert all(d['score'] >= 0.55 for v in boxes.values() for d in v)


def test_benchmarks_store_detected_boxes_keyed_by_path(env, tmp_path):
  path, summary = detect.detect_dataset(
      'emo8', env['bench_root'], tmp_path, weights=env['weights'], cfg=env['cfg'], size=SIZE,
      batch=BATCH, min_score=MIN_SCORE)
  boxes = json.loads(path.read_text())
  assert len(boxes) == summary['images'] == 24
  assert all(k.count('/') == 2 for k in boxes)   # train/<class>/<file>, not a bare stem
  builder = prepare_tool.prepare_with_boxes('emo8', env['bench_root'], tmp_path, os.fspath(path),
                                            MIN_SCORE)
  assert str(builder.info.version) == '1.1.0'
  records = _records('emotion_folder/emo8', tmp_path)
  with_person = _check_stored_boxes(records, boxes, MIN_SCORE)
  assert with_person == summary['with_person'] > 0
  # Without boxes the same features are there, empty.
  builders.prepare('emo8', env['bench_root'], tmp_path / 'plain')
  for r in _records('emotion_folder/emo8', tmp_path / 'plain').values():
    assert not r['has_person'] and r['person_score'] == 0 and not r['person_box'].any()


def test_bad_weights_fail_before_anything_is_detected(env, tmp_path):
  short = tmp_path / 'short.weights'
  short.write_bytes(env['weights'].read_bytes()[:-8])
  with pytest.raises(darknet.WeightsSizeError, match='2 floats missing'):
    detect.detect_dataset('emoset', env['emoset']['root'], tmp_path, weights=short,
                          cfg=env['cfg'], size=SIZE, batch=BATCH)
  with pytest.raises(darknet.DarknetError, match='input size 100 does not fit'):
    detect.detect_dataset('emoset', env['emoset']['root'], tmp_path, weights=env['weights'],
                          cfg=env['cfg'], size=100, batch=BATCH)
  assert not (tmp_path / 'person_boxes').exists()


@pytest.mark.slow
def test_detect_benchmark_tiny(env):
  cmd = [sys.executable, os.path.join(REPO, 'benchmarks', 'detect.py'), f'--cfg={env["cfg"]}',
         '--size=64', '--batch=4', '--images=8', '--iters=1', '--width=64', '--height=48']
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd='/',
                        env=dict(os.environ, JAX_PLATFORMS='cpu', HF_HUB_OFFLINE='1'))
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stdout
  row = json.loads(lines[0])
  assert (row['batch'], row['size'], row['pass_images']) == (4, 64, 8)
  assert row['network_images_per_s'] > 0 and row['pass_images_per_s'] > 0
  assert 'img/s' in proc.stderr


@pytest.mark.slow
def test_prepare_cli_reports_bad_detector_files_as_one_error(env, tmp_path):
  short = tmp_path / 'short.weights'
  short.write_bytes(env['weights'].read_bytes()[:-8])
  base = [sys.executable, '-m', 'uniemox_jax.tools.prepare', '--dataset=emoset',
          f'--manual_dir={env["emoset"]["root"]}', f'--data_dir={tmp_path / "tfds"}']
  run = lambda *a: subprocess.run(  # noqa: E731
      base + list(a), cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu', HF_HUB_OFFLINE='1'))
  p = run('--person_boxes=yolov3', f'--yolo_weights={short}', f'--yolo_cfg={env["cfg"]}')
  assert p.returncode == 2 and 'error: WeightsSizeError:' in p.stderr
  assert '2 floats missing' in p.stderr and 'Traceback' not in p.stderr
  p = run('--person_boxes=yolov3')
  assert p.returncode == 2 and 'needs --yolo_weights=PATH' in p.stderr
  assert not (tmp_path / 'tfds' / 'emoset').exists()

"""TFDS builders (EmoSet, the six benchmarks), the prepare tool and load_source, on generated
look-alike trees (uniemox_jax.data.demo)."""
import csv
import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniemox_jax.data import builders, demo
from uniemox_jax.data.builders import images as images_lib
from uniemox_jax.data.captions import build_caption
from uniemox_jax.data.classes import BENCHMARKS, EMOSET_CLASSES, SPLITS

REPO = Path(__file__).resolve().parents[1]
PER_CLASS = (3, 1, 1)
SIZE = (64, 48)          # (W, H) of every generated image
MULTI_WORD = ['Alarm clock', 'Ferris wheel']


def _records(dataset, split, data_dir):
  src = builders.load_source(dataset, split, data_dir)
  return [src[i] for i in range(len(src))]


def _by_id(data_dir, dataset='emoset'):
  return {s: {r['image_id']: r for r in _records(dataset, s, data_dir)} for s in SPLITS}


def _write_emoset(root, layout='official', per_class=PER_CLASS):
  info = demo.write_emoset(root, per_class=per_class, image_size=SIZE, layout=layout)
  # One annotation with multi-word objects and missing attributes, the same in both layouts.
  ann_path = Path(root) / 'annotation' / 'awe'
  target = sorted(ann_path.glob('*.json'))[-1]
  ann = json.loads(target.read_text())
  ann['object'] = MULTI_WORD
  for key in ('scene', 'brightness', 'facial_expression'):
    ann.pop(key, None)
  target.write_text(json.dumps(ann))
  info['edited'] = target.stem
  return info


@pytest.fixture(scope='module')
def emoset(tmp_path_factory):
  """The official layout, prepared with the demo's person boxes."""
  tmp = tmp_path_factory.mktemp('emoset')
  info = _write_emoset(tmp / 'EmoSet')
  data_dir = tmp / 'tfds'
  builder = builders.prepare('emoset', info['root'], data_dir,
                             person_boxes=info['files']['person_boxes'])
  return dict(info=info, builder=builder, data_dir=data_dir, records=_by_id(data_dir))


@pytest.fixture(scope='module')
def benchmarks(tmp_path_factory):
  """Every benchmark written under one root with (1, 1, 1) images per class, and prepared."""
  tmp = tmp_path_factory.mktemp('bench')
  root, data_dir = tmp / 'benchmarks', tmp / 'tfds'
  written = {n: demo.write_benchmark(root, n, per_class=(1, 1, 1), image_size=SIZE)
             for n in BENCHMARKS}
  prepared = {n: builders.prepare(f'emotion_folder/{n}', root, data_dir) for n in BENCHMARKS}
  return dict(root=root, data_dir=data_dir, written=written, prepared=prepared)


# ------------------------------------------------------------------------------ EmoSet

def _rows(info, split):
  rows = json.loads(Path(info['files'][split]).read_text())
  return {(r[1] if len(r) == 4 else Path(r[1]).stem): r for r in rows}


def test_emoset_counts_labels_and_ids(emoset):
  info, builder = emoset['info'], emoset['builder']
  assert {s: builder.info.splits[s].num_examples for s in SPLITS} == info['counts']
  assert info['counts'] == {'train': 24, 'val': 8, 'test': 8}
  assert tuple(builder.info.features['label'].names) == EMOSET_CLASSES
  for split in SPLITS:
    recs = emoset['records'][split]
    rows = _rows(info, split)
    assert set(recs) == set(rows)
    for image_id, r in recs.items():
      assert r['emotion'] == rows[image_id][0]
      assert r['label'] == EMOSET_CLASSES.index(r['emotion'])
      assert (r['height'], r['width']) == (SIZE[1], SIZE[0])


def test_emoset_captions_and_attributes(emoset):
  root = Path(emoset['info']['root'])
  seen_missing = set()
  for recs in emoset['records'].values():
    for image_id, r in recs.items():
      ann = json.loads((root / 'annotation' / r['emotion'] / f'{image_id}.json').read_text())
      assert r['caption'] == build_caption(ann, r['emotion'])
      assert r['caption_no_emotion'] == build_caption(ann, r['emotion'],
                                                      include_emotion=False)
      assert r['caption'].endswith(f'The overall emotion conveyed is {r["emotion"]}.')
      assert 'emotion conveyed' not in r['caption_no_emotion']
      for key in ('scene', 'facial_expression', 'human_action'):
        assert isinstance(r[key], str) and r[key] == ann.get(key, '')
      assert r['objects'] == ann.get('object', [])
      for key in ('brightness', 'colorfulness'):
        assert r[key] == pytest.approx(ann.get(key, -1.0))
      seen_missing |= {k for k in ('scene', 'object', 'brightness', 'colorfulness')
                       if k not in ann}
  assert seen_missing == {'scene', 'object', 'brightness', 'colorfulness'}
  edited = next(recs[emoset['info']['edited']] for recs in emoset['records'].values()
                if emoset['info']['edited'] in recs)
  assert edited['objects'] == MULTI_WORD           # names kept whole
  assert 'The main subjects are Alarm clock and Ferris wheel.' in edited['caption']
  assert edited['scene'] == '' and edited['facial_expression'] == ''
  assert edited['brightness'] == -1.0
  assert 'brightness' not in edited['caption']


def test_three_field_layout_gives_the_same_examples(emoset, tmp_path):
  info = _write_emoset(tmp_path / 'EmoSet3', layout='three_field')
  assert 'label2idx' in json.loads(Path(info['files']['info']).read_text())
  b = builders.prepare('emoset', info['root'], tmp_path / 'tfds',
                       person_boxes=info['files']['person_boxes'])
  assert b.info.metadata['prepare']['layout'] == 'three_field'
  assert emoset['builder'].info.metadata['prepare']['layout'] == 'official'
  three = _by_id(tmp_path / 'tfds')
  for split in SPLITS:
    assert set(three[split]) == set(emoset['records'][split])
    for image_id, r in three[split].items():
      o = emoset['records'][split][image_id]
      assert set(r) == set(o)
      for key in r:
        if isinstance(r[key], np.ndarray):
          np.testing.assert_array_equal(r[key], o[key])
        else:
          assert r[key] == o[key], (image_id, key)


def test_person_boxes_against_the_demo_detections(emoset):
  boxes = json.loads(Path(emoset['info']['files']['person_boxes']).read_text())
  n_person = 0
  for recs in emoset['records'].values():
    for image_id, r in recs.items():
      strong = [d for d in boxes.get(image_id, []) if d['score'] >= 0.8]
      if not strong:
        assert not r['has_person'] and r['person_score'] == 0.0
        np.testing.assert_array_equal(r['person_box'], np.zeros(4))
        continue
      n_person += 1
      best = max(strong, key=lambda d: d['score'])
      x0, y0, x1, y1 = best['box']   # the demo's exact figure box
      assert r['has_person'] and r['person_score'] == pytest.approx(best['score'])
      assert r['person_box'].dtype == np.float32
      h, w = r['height'], r['width']
      np.testing.assert_allclose(r['person_box'] * [h, w, h, w], [y0, x0, y1, x1],
                                 atol=1e-4)
  assert n_person == emoset['info']['with_person'] > 0


def test_person_box_keys_may_be_file_names_or_paths_but_must_match(emoset, tmp_path):
  boxes = json.loads(Path(emoset['info']['files']['person_boxes']).read_text())
  emotion = {i: r['emotion'] for recs in emoset['records'].values() for i, r in recs.items()}
  # Keyed by the path relative to the data set, as a detector run over image/ would write.
  by_path = {f'image/{emotion[k]}/{k}.jpg': v for k, v in boxes.items()}
  path_file = tmp_path / 'by_path.json'
  path_file.write_text(json.dumps(by_path))
  builders.prepare('emoset', emoset['info']['root'], tmp_path / 'tfds',
                   person_boxes=path_file)
  for split, recs in _by_id(tmp_path / 'tfds').items():
    for image_id, r in recs.items():
      ref = emoset['records'][split][image_id]
      assert r['has_person'] == ref['has_person']
      np.testing.assert_array_equal(r['person_box'], ref['person_box'])
  assert builders.person_boxes.image_id_of('C:\\data\\x_1.JPEG') == 'x_1'
  assert builders.person_boxes.image_id_of('x_1.v2') == 'x_1.v2'  # not an image suffix
  # Keys that name no image of the data set stop the prepare with examples of both.
  other = tmp_path / 'other.json'
  other.write_text(json.dumps({f'coco_{i}': v for i, v in enumerate(boxes.values())}))
  with pytest.raises(builders.ManualDirError, match=r"none of its .* keys \(e\.g\. \['coco_0'"):
    builders.prepare('emoset', emoset['info']['root'], tmp_path / 'tfds2', person_boxes=other)
  assert not (tmp_path / 'tfds2' / 'emoset' / '1.0.0').exists()


def test_without_boxes_file_every_image_is_person_less(tmp_path, caplog):
  info = demo.write_emoset(tmp_path / 'EmoSet', per_class=(1, 1, 1), image_size=SIZE)
  caplog.set_level(logging.INFO)
  builders.prepare('emoset', info['root'], tmp_path / 'tfds')
  assert 'no person boxes file given' in caplog.text
  for split in SPLITS:
    for r in _records('emoset', split, tmp_path / 'tfds'):
      assert not r['has_person'] and r['person_score'] == 0.0
      assert not r['person_box'].any()


def test_idempotent_second_prepare(emoset, caplog):
  data_dir, info = emoset['data_dir'], emoset['info']
  files = sorted(Path(emoset['builder'].data_dir).iterdir())
  before = {p: p.stat().st_mtime_ns for p in files}
  caplog.set_level(logging.INFO)
  again = builders.prepare('emoset', info['root'], data_dir,
                           person_boxes=info['files']['person_boxes'])
  assert again.data_dir == emoset['builder'].data_dir
  assert {p: p.stat().st_mtime_ns for p in sorted(Path(again.data_dir).iterdir())} == before
  assert again.info.splits['train'].num_examples == 24
  assert 'reusing' in caplog.text.lower()
  caplog.clear()
  builders.prepare('emoset', info['root'], data_dir, min_person_score=0.5,
                   person_boxes=info['files']['person_boxes'])
  assert 'min_person_score' in caplog.text and 'differ' in caplog.text


# ------------------------------------------------------------------------------ person boxes

DETECTIONS = {
    'several': [{'box': [1, 2, 11, 12], 'score': 0.85, 'label': 'person'},
                {'box': [10, 5, 40, 45], 'score': 0.95, 'label': 'person'},
                {'box': [0, 0, 64, 48], 'score': 0.99, 'label': 'dog'},
                {'box': [3, 3, 30, 30], 'score': 0.90}],
    'low_only': [{'box': [5, 5, 20, 20], 'score': 0.5, 'label': 'person'}],
    'clipped': [{'box': [-10, -5, 70, 60], 'score': 0.9, 'label': 'person'}],
    'outside': [{'box': [80, 60, 90, 70], 'score': 0.9, 'label': 'person'},
                {'box': [0, 0, 32, 24], 'score': 0.8, 'label': 'person'}],
}


def _write_csv(path, detections, with_label=True):
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['image_id', 'x0', 'y0', 'x1', 'y1', 'score'] + (['label'] if with_label else []))
    for image_id, dets in detections.items():
      for d in dets:
        if not with_label and d.get('label', 'person') != 'person':
          continue
        w.writerow([image_id, *d['box'], d['score']]
                   + ([d.get('label', 'person')] if with_label else []))


@pytest.mark.parametrize('fmt', ['json', 'csv', 'csv_no_label'])
def test_person_box_selection(tmp_path, fmt):
  path = tmp_path / ('boxes.json' if fmt == 'json' else 'boxes.csv')
  if fmt == 'json':
    path.write_text(json.dumps(DETECTIONS))
  else:
    _write_csv(path, DETECTIONS, with_label=fmt == 'csv')
  boxes = builders.FilePersonBoxes(path)
  assert isinstance(boxes, builders.PersonBoxes)
  w, h = 64, 48
  box, score = boxes.lookup('several', w, h)       # highest-scoring person wins
  assert score == pytest.approx(0.95)
  np.testing.assert_allclose(box, [5 / h, 10 / w, 45 / h, 40 / w], rtol=1e-6)
  assert boxes.lookup('low_only', w, h) == (None, 0.0)
  assert boxes.lookup('no_entry', w, h) == (None, 0.0)
  box, score = boxes.lookup('clipped', w, h)
  np.testing.assert_allclose(box, [0, 0, 1, 1])
  box, score = boxes.lookup('outside', w, h)       # nothing of the 0.9 box is in the image
  assert score == pytest.approx(0.8)
  np.testing.assert_allclose(box, [0, 0, 0.5, 0.5])
  assert '3/5 images have a person' in boxes.summary()
  # The threshold is configurable.
  box, score = builders.FilePersonBoxes(path, min_score=0.5).lookup('low_only', w, h)
  assert score == pytest.approx(0.5)
  np.testing.assert_allclose(box, [5 / h, 5 / w, 20 / h, 20 / w], rtol=1e-6)
  box, score = builders.FilePersonBoxes(path, min_score=0.96).lookup('several', w, h)
  assert (box, score) == (None, 0.0)


def test_person_box_file_errors(tmp_path):
  bad_csv = tmp_path / 'b.csv'
  bad_csv.write_text('id,x0,y0,x1,y1\na,1,2,3,4\n')
  with pytest.raises(ValueError, match=r"lack \['image_id', 'score'\]"):
    builders.FilePersonBoxes(bad_csv)
  bad_json = tmp_path / 'b.json'
  bad_json.write_text(json.dumps({'a': [{'box': [1, 2, 3], 'score': 0.9}]}))
  with pytest.raises(ValueError, match="key 'a', detection 0"):
    builders.FilePersonBoxes(bad_json)
  with pytest.raises(FileNotFoundError, match='nope.json'):
    builders.FilePersonBoxes(tmp_path / 'nope.json')
  with pytest.raises(ValueError, match='min_person_score'):
    builders.FilePersonBoxes(bad_json, min_score=1.5)


# ------------------------------------------------------------------------------ errors

def test_manual_dir_errors_are_early_and_named(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(builders.ManualDirError) as e:
    builders.prepare('emoset', empty, tmp_path / 'tfds')
  msg = str(e.value)
  assert str(empty) in msg and 'info.json' in msg and 'train.json' in msg
  assert 'github.com/JingyuanYY/EmoSet' in msg
  assert not (tmp_path / 'tfds' / 'emoset' / '1.0.0').exists()
  # Pointed at the parent of the EmoSet root: the error suggests the right directory.
  demo.write_emoset(tmp_path / 'parent' / 'EmoSet', per_class=(1, 0, 0), image_size=SIZE)
  with pytest.raises(builders.ManualDirError, match='did you mean --manual_dir=.*EmoSet'):
    builders.prepare('emoset', tmp_path / 'parent', tmp_path / 'tfds')
  with pytest.raises(builders.ManualDirError, match='does not exist'):
    builders.prepare('emoset', tmp_path / 'missing', tmp_path / 'tfds')
  with pytest.raises(FileNotFoundError, match='nope.json'):
    builders.prepare('emoset', tmp_path / 'parent' / 'EmoSet', tmp_path / 'tfds',
                     person_boxes=tmp_path / 'nope.json')
  assert not (tmp_path / 'tfds' / 'emoset' / '1.0.0').exists()
  with pytest.raises(ValueError, match='Unknown dataset'):
    builders.prepare('emoset2', empty, tmp_path / 'tfds')
  with pytest.raises(TypeError, match='person_boxes'):
    builders.prepare('emo8', empty, tmp_path / 'tfds', person_boxes='x.json')


def _corrupt_emoset(root):
  """Breaks five examples of a (1, 1, 1) EmoSet tree; returns {path: reason fragment}."""
  bad_dir = Path(root) / 'bad_src'
  zero, truncated, text = (Path(p).read_bytes() for p in demo.write_bad_images(bad_dir))
  shutil.rmtree(bad_dir)
  img = lambda e: sorted((Path(root) / 'image' / e).glob('*.jpg'))[0]  # noqa: E731
  broken = {img('amusement'): 'zero-byte', img('awe'): 'truncated',
            img('anger'): 'cannot identify', img('fear'): 'missing image'}
  img('amusement').write_bytes(zero)
  img('awe').write_bytes(truncated)
  img('anger').write_bytes(text)
  img('fear').unlink()
  ann = sorted((Path(root) / 'annotation' / 'sadness').glob('*.json'))[0]
  ann.unlink()
  broken[Path(root) / 'image' / 'sadness' / f'{ann.stem}.jpg'] = 'missing annotation'
  return broken


def test_bad_images_fail_with_all_of_them_or_are_skipped_with_a_report(tmp_path):
  info = demo.write_emoset(tmp_path / 'EmoSet', per_class=(1, 1, 1), image_size=SIZE)
  broken = _corrupt_emoset(info['root'])
  with pytest.raises(builders.BadImagesError) as e:
    builders.prepare('emoset', info['root'], tmp_path / 'tfds')
  msg = str(e.value)
  assert len(e.value.bad) == 5
  for path, reason in broken.items():
    line = next(l for l in msg.splitlines() if str(path) in l)
    assert reason in line, line
  assert 'skip_bad_images' in msg and 'bad_images.json' in msg
  assert '"awe"' in msg    # the index row is shown
  assert not (tmp_path / 'tfds' / 'emoset' / '1.0.0').exists()

  b = builders.prepare('emoset', info['root'], tmp_path / 'tfds', skip_bad_images=True)
  report = json.loads((Path(b.data_dir) / 'bad_images.json').read_text())
  assert b.report_path == Path(b.data_dir) / 'bad_images.json'
  assert sorted(r['path'] for r in report['bad_images']) == sorted(map(str, broken))
  bad_split = {}
  for r in report['bad_images']:
    bad_split[r['split']] = bad_split.get(r['split'], 0) + 1
  expected = {s: info['counts'][s] - bad_split.get(s, 0) for s in SPLITS}
  assert {s: b.info.splits[s].num_examples for s in SPLITS} == expected
  assert report['counts'] == expected and sum(expected.values()) == 24 - 5
  got = {r['image_id'] for s in SPLITS for r in _records('emoset', s, tmp_path / 'tfds')}
  assert not got & {Path(p).stem for p in broken}


def test_benchmark_bad_images_and_non_jpeg(tmp_path):
  root = tmp_path / 'benchmarks'
  demo.write_benchmark(root, 'emo8', per_class=(1, 1, 1), image_size=SIZE)
  bad = demo.write_bad_images(root / 'emo8' / 'train' / 'anger')
  png = root / 'emo8' / 'val' / 'awe' / 'drawn.png'
  Image.new('RGBA', (40, 30), (10, 200, 30, 128)).save(png)
  (root / 'emo8' / 'test' / 'fear' / '.DS_Store').write_bytes(b'\0\1')
  with pytest.raises(builders.BadImagesError) as e:
    builders.prepare('emotion_folder/emo8', root, tmp_path / 'tfds')
  assert sorted(b.path for b in e.value.bad) == sorted(bad)
  b = builders.prepare('emotion_folder/emo8', root, tmp_path / 'tfds', skip_bad_images=True)
  assert {s: b.info.splits[s].num_examples for s in SPLITS} == {'train': 8, 'val': 9,
                                                                 'test': 8}
  report = json.loads((Path(b.data_dir) / builders.REPORT_NAME).read_text())
  assert sorted(r['path'] for r in report['bad_images']) == sorted(bad)
  rec = next(r for r in _records('emo8', 'val', tmp_path / 'tfds')
             if r['image_id'] == 'val/awe/drawn.png')
  with Image.open(io.BytesIO(rec['image'])) as im:
    assert (im.format, im.mode, im.size) == ('JPEG', 'RGB', (40, 30))
  assert (rec['width'], rec['height']) == (40, 30)


def test_class_and_split_folder_errors_name_the_folders(tmp_path):
  root = tmp_path / 'benchmarks'
  demo.write_benchmark(root, 'emotion6', per_class=(1, 1, 1), image_size=SIZE)
  ds = root / 'Emotion6'
  (ds / 'train' / 'joy').rename(ds / 'train' / 'happy')
  (ds / 'val' / 'neutral').mkdir()
  with pytest.raises(builders.ManualDirError) as e:
    builders.prepare('emotion6', root, tmp_path / 'tfds')
  msg = str(e.value)
  train_line = next(l for l in msg.splitlines() if str(ds / 'train') in l)
  assert "missing: ['joy']" in train_line and "unexpected: ['happy']" in train_line
  val_line = next(l for l in msg.splitlines() if str(ds / 'val') in l)
  assert "unexpected: ['neutral']" in val_line and 'missing: []' in val_line
  shutil.rmtree(ds / 'test')
  with pytest.raises(builders.ManualDirError, match=f'{ds / "test"}.*missing'):
    builders.prepare('emotion6', root, tmp_path / 'tfds')
  assert not (tmp_path / 'tfds' / 'emotion_folder' / 'emotion6').exists()


# ------------------------------------------------------------------------------ benchmarks

def test_every_benchmark_prepares_and_reads_back(benchmarks):
  for name, bench in BENCHMARKS.items():
    b = benchmarks['prepared'][name]
    assert tuple(b.info.features['label'].names) == bench.classes
    n = bench.num_classes
    assert {s: b.info.splits[s].num_examples for s in SPLITS} == {s: n for s in SPLITS}
    assert benchmarks['written'][name]['counts'] == {s: n for s in SPLITS}
    for split in SPLITS:
      recs = _records(f'emotion_folder/{name}', split, benchmarks['data_dir'])
      assert sorted(r['label'] for r in recs) == list(range(n))
      for r in recs:
        s, cls, fname = r['image_id'].split('/')
        assert s == split and cls == bench.classes[r['label']]
        assert (Path(benchmarks['root']) / bench.folder / r['image_id']).read_bytes() \
            == r['image']    # JPEGs are stored as the original bytes
        assert (r['width'], r['height']) == SIZE


def test_benchmark_manual_dir_may_be_the_dataset_folder(benchmarks, tmp_path):
  folder = Path(benchmarks['root']) / BENCHMARKS['heco'].folder
  b = builders.prepare('emotion_folder/heco', folder, tmp_path / 'tfds')
  assert b.info.splits['train'].num_examples == BENCHMARKS['heco'].num_classes
  ids = lambda d: sorted(r['image_id'] for r in _records('heco', 'test', d))  # noqa: E731
  assert ids(tmp_path / 'tfds') == ids(benchmarks['data_dir'])


def test_capitalised_class_folders_match_ignoring_case(benchmarks, tmp_path):
  # The authors' split script writes e.g. HECO's and CAER-S's class folders capitalised.
  bench = BENCHMARKS['heco']
  ds = tmp_path / 'raw' / 'HECO'
  shutil.copytree(Path(benchmarks['root']) / bench.folder, ds)
  for split in SPLITS:
    for cls in bench.classes:
      (ds / split / cls).rename(ds / split / cls.capitalize())
  b = builders.prepare('emotion_folder/heco', tmp_path / 'raw', tmp_path / 'tfds')
  assert tuple(b.info.features['label'].names) == bench.classes
  for split in SPLITS:
    recs = _records('emotion_folder/heco', split, tmp_path / 'tfds')
    assert sorted(r['label'] for r in recs) == list(range(bench.num_classes))
    for r in recs:
      folder = r['image_id'].split('/')[1]
      assert folder == bench.classes[r['label']].capitalize()
  # Two folders of one class that differ only in case are refused, naming both.
  (ds / 'test' / 'anger').mkdir()
  with pytest.raises(builders.ManualDirError, match=r"\['Anger', 'anger'\] differ only in case"):
    builders.prepare('emotion_folder/heco', tmp_path / 'raw', tmp_path / 'tfds2')


# ------------------------------------------------------------------------------ load_source

def test_load_source_returns_bytes_and_str(emoset, benchmarks):
  src = builders.load_source('emoset', 'train', emoset['data_dir'])
  assert len(src) == 24
  r = src[3]
  assert isinstance(r['image'], bytes)
  for key in ('emotion', 'image_id', 'caption', 'caption_no_emotion', 'scene'):
    assert isinstance(r[key], str)
  assert all(isinstance(o, str) for o in r['objects'])
  with Image.open(io.BytesIO(r['image'])) as im:
    assert im.format == 'JPEG' and im.size == (r['width'], r['height']) == SIZE
  assert len(builders.load_source('emoset', 'train+val', emoset['data_dir'])) == 32
  batch = src.__getitems__([0, 5, 7])
  assert [b['image_id'] for b in batch] == [src[i]['image_id'] for i in (0, 5, 7)]
  again = pickle.loads(pickle.dumps(src))      # Grain workers get a pickled source
  assert again[5]['caption'] == src[5]['caption']
  emo8 = builders.load_source('emotion_folder/emo8', 'test', benchmarks['data_dir'])
  assert isinstance(emo8[0]['image'], bytes) and isinstance(emo8[0]['image_id'], str)


def test_load_source_unprepared_shows_the_prepare_command(tmp_path):
  for name in ('emoset', 'emotion_folder/fi'):
    with pytest.raises(builders.DatasetNotPreparedError) as e:
      builders.load_source(name, 'train', tmp_path / 'nothing')
    msg = str(e.value)
    assert f'python -m uniemox_jax.tools.prepare --dataset={name} --manual_dir=' in msg
    assert f'--data_dir={tmp_path / "nothing"}' in msg
  assert not (tmp_path / 'nothing').exists()    # looking does not create anything


def test_scan_images_in_a_process_pool_matches_serial(tmp_path, monkeypatch):
  info = demo.write_benchmark(tmp_path, 'emo8', per_class=(1, 0, 0), image_size=SIZE)
  paths = sorted(map(str, Path(info['root']).rglob('*.jpg')))
  paths += demo.write_bad_images(tmp_path / 'bad') + [str(tmp_path / 'missing.jpg')]
  serial = images_lib.scan_images(paths, num_workers=1)
  monkeypatch.setattr(images_lib, 'MIN_IMAGES_FOR_POOL', 0)
  pooled = images_lib.scan_images(paths, num_workers=2)
  assert pooled == serial
  assert [c.ok for c in serial] == [True] * 8 + [False] * 4
  assert serial[-1].reason == 'missing file' and serial[-4].reason == 'zero-byte file'
  assert 'truncated' in serial[-3].reason


# ------------------------------------------------------------------------------ CLI

def _cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'uniemox_jax.tools.prepare', *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_cli_end_to_end(tmp_path):
  out = demo.generate(tmp_path / 'demo', size='tiny')
  data_dir = tmp_path / 'tfds'
  p = _cli('--dataset=emoset', f'--manual_dir={out["emoset"]["root"]}',
           f'--data_dir={data_dir}',
           f'--person_boxes={out["emoset"]["files"]["person_boxes"]}')
  assert p.returncode == 0, p.stderr[-3000:]
  assert f'-> {data_dir / "emoset" / "1.0.0"}' in p.stdout and 'prepared in' in p.stdout
  for split, n in out['emoset']['counts'].items():
    assert f'{split:6s} {n:8d} examples' in p.stdout
  assert 'bad images left out: 0' in p.stdout
  p = _cli('--dataset=emotion_folder/emo8', f'--manual_dir={tmp_path / "demo" / "benchmarks"}',
           f'--data_dir={data_dir}')
  assert p.returncode == 0, p.stderr[-3000:]
  assert f'train  {out["benchmarks"]["emo8"]["counts"]["train"]:8d} examples' in p.stdout
  p = _cli('--dataset=emoset', f'--manual_dir={out["emoset"]["root"]}',
           f'--data_dir={data_dir}')
  assert p.returncode == 0 and 'reused in' in p.stdout
  assert len(builders.load_source('emoset', 'val', data_dir)) == out['emoset']['counts']['val']
  p = _cli('--dataset=emoset', f'--manual_dir={tmp_path / "nowhere"}',
           f'--data_dir={tmp_path / "tfds2"}')
  assert p.returncode != 0 and 'does not exist' in p.stderr

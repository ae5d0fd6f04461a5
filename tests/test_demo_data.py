"""The class lists, the caption builder and the generated demo data sets."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniemox_jax.data import captions, classes, demo
from uniemox_jax.data.captions import build_caption
from uniemox_jax.data.classes import BENCHMARKS, EMOSET_CLASSES

TINY = demo.SIZES['tiny']


# ------------------------------------------------------------------------------ classes

def test_emoset_classes_in_info_json_order():
  assert EMOSET_CLASSES == ('amusement', 'awe', 'contentment', 'excitement',
                            'anger', 'disgust', 'fear', 'sadness')


def test_benchmark_folders_and_sorted_classes():
  folders = {name: b.folder for name, b in BENCHMARKS.items()}
  assert folders == {'emo8': 'emo8', 'fi': 'FI', 'emotion6': 'Emotion6',
                     'unbiasedemo': 'UBE', 'caer_s': 'CAER-S', 'heco': 'HECO'}
  mikels = ('amusement', 'anger', 'awe', 'contentment', 'disgust', 'excitement', 'fear',
            'sadness')
  assert BENCHMARKS['emo8'].classes == mikels
  assert BENCHMARKS['fi'].classes == mikels
  assert BENCHMARKS['emotion6'].classes == ('anger', 'disgust', 'fear', 'joy', 'sadness',
                                            'surprise')
  assert BENCHMARKS['unbiasedemo'].classes == ('anger', 'fear', 'joy', 'love', 'sadness',
                                               'surprise')
  assert set(BENCHMARKS['caer_s'].classes) == {'anger', 'disgust', 'fear', 'happy',
                                               'neutral', 'sad', 'surprise'}
  assert set(BENCHMARKS['heco'].classes) == {'surprise', 'excitement', 'happiness', 'peace',
                                             'disgust', 'anger', 'fear', 'sadness'}
  for b in BENCHMARKS.values():
    assert b.classes == tuple(sorted(b.classes))
    assert b.num_classes == len(b.classes)
  with pytest.raises(KeyError, match='known'):
    classes.get_benchmark('emo9')


def test_every_benchmark_class_has_its_own_drawing_style():
  for b in BENCHMARKS.values():
    styles = [demo.style_of(c) for c in b.classes]
    assert len(set(styles)) == len(styles), b.name


# ------------------------------------------------------------------------------ captions

FULL = {'scene': 'amusement_park', 'object': ['Balloon', 'Alarm clock', 'Toy'],
        'brightness': 0.4, 'colorfulness': 1.0, 'facial_expression': 'happy',
        'human_action': 'juggling'}


def test_caption_all_attributes():
  assert build_caption(FULL, 'amusement') == (
      'The scene type of this photo is amusement_park. '
      'The main subjects are Balloon, Alarm clock and Toy. '
      'The image has a brightness of 0.4 and color saturation of 1.0. '
      'Human facial expression is happy. '
      'The action being performed is juggling. '
      'The overall emotion conveyed is amusement.')


def test_caption_object_counts_keep_multiword_names():
  one = build_caption({'object': ['Alarm clock']}, 'awe')
  assert one == 'The main subjects are Alarm clock. The overall emotion conveyed is awe.'
  two = build_caption({'object': ['Alarm clock', 'Sports car']}, 'awe', include_emotion=False)
  assert two == 'The main subjects are Alarm clock and Sports car.'
  four = build_caption({'object': ['A', 'B c', 'D', 'E']}, 'awe', include_emotion=False)
  assert four == 'The main subjects are A, B c, D and E.'
  # A bare string is one name, never split on spaces.
  assert build_caption({'object': 'Alarm clock'}, 'x', include_emotion=False) == (
      'The main subjects are Alarm clock.')


def test_caption_missing_attributes_are_skipped():
  assert build_caption({}, 'fear') == 'The overall emotion conveyed is fear.'
  assert build_caption({}, 'fear', include_emotion=False) == ''
  attrs = dict(FULL, scene=None, facial_expression=None, object=[])
  del attrs['human_action']
  assert build_caption(attrs, 'sadness') == (
      'The image has a brightness of 0.4 and color saturation of 1.0. '
      'The overall emotion conveyed is sadness.')
  assert build_caption({'brightness': 0.30000000000000004}, 'a', include_emotion=False) == (
      'The image has a brightness of 0.3.')
  assert build_caption({'colorfulness': 0}, 'a', include_emotion=False) == (
      'The image has a color saturation of 0.0.')
  only_face = build_caption({'facial_expression': 'sad', 'human_action': 'crying'}, 'sadness',
                            include_emotion=False)
  assert only_face == 'Human facial expression is sad. The action being performed is crying.'
  assert captions.ATTRIBUTE_KEYS == ('scene', 'object', 'brightness', 'colorfulness',
                                     'facial_expression', 'human_action')


# ------------------------------------------------------------------------------ EmoSet

@pytest.fixture(scope='module')
def emoset(tmp_path_factory):
  root = tmp_path_factory.mktemp('emoset') / 'EmoSet'
  info = demo.write_emoset(root, seed=0, per_class=TINY['emoset'],
                           image_size=TINY['image_size'])
  return root, info


def _load(path):
  return json.loads(Path(path).read_text())


def test_official_layout_parses(emoset):
  root, result = emoset
  info = _load(root / 'info.json')
  emo = info['emotion']
  assert emo['label2idx'] == {e: i for i, e in enumerate(EMOSET_CLASSES)}
  assert emo['idx2label'] == {str(i): e for i, e in enumerate(EMOSET_CLASSES)}
  for key in captions.ATTRIBUTE_KEYS:
    l2i, i2l = info[key]['label2idx'], info[key]['idx2label']
    assert sorted(l2i.values()) == list(range(len(l2i)))
    assert {v: int(k) for k, v in i2l.items()} == l2i
  assert list(info['brightness']['label2idx']) == [f'{i / 10:.1f}' for i in range(11)]

  train, val, test = (_load(root / f'{s}.json') for s in ('train', 'val', 'test'))
  n_train, n_val, n_test = TINY['emoset']
  assert (len(train), len(val), len(test)) == (8 * n_train, 8 * n_val, 8 * n_test)
  assert result['counts'] == {'train': len(train), 'val': len(val), 'test': len(test)}
  ids = [r[1] for r in train + val + test]
  assert len(set(ids)) == len(ids)
  seen = {k: 0 for k in captions.ATTRIBUTE_KEYS}
  absent = {k: 0 for k in captions.ATTRIBUTE_KEYS}
  multiword = 0
  for emotion, image_id, image_path, ann_path in train + val + test:
    assert emotion in EMOSET_CLASSES and image_id.startswith(emotion + '_')
    assert image_path == f'image/{emotion}/{image_id}.jpg'
    assert ann_path == f'annotation/{emotion}/{image_id}.json'
    with Image.open(root / image_path) as im:
      assert im.format == 'JPEG' and im.size == TINY['image_size'] and im.mode == 'RGB'
    ann = _load(root / ann_path)
    assert set(ann) <= set(captions.ATTRIBUTE_KEYS)
    for k in captions.ATTRIBUTE_KEYS:
      seen[k] += k in ann
      absent[k] += k not in ann
    for k in ('brightness', 'colorfulness'):
      if k in ann:
        v = ann[k]
        assert 0.0 <= v <= 1.0 and abs(v * 10 - round(v * 10)) < 1e-9
        assert f'{v:.1f}' in info[k]['label2idx']
    for k in ('scene', 'facial_expression', 'human_action'):
      if k in ann:
        assert ann[k] in info[k]['label2idx']
    if 'scene' in ann:
      assert ' ' not in ann['scene']
    if 'object' in ann:
      assert isinstance(ann['object'], list) and 1 <= len(ann['object']) <= 3
      assert all(o in info['object']['label2idx'] for o in ann['object'])
      multiword += any(' ' in o for o in ann['object'])
    assert build_caption(ann, emotion).endswith(f'The overall emotion conveyed is {emotion}.')
  assert all(seen.values()), seen
  assert all(absent.values()), absent
  assert multiword > 0


def test_person_boxes(emoset):
  root, result = emoset
  w, h = TINY['image_size']
  boxes = _load(root / 'person_boxes.json')
  rows = sum((_load(root / f'{s}.json') for s in ('train', 'val', 'test')), [])
  ids = {r[1] for r in rows}
  assert set(boxes) <= ids
  assert len(ids - set(boxes)) > 0            # some images have no detector entry
  confident = 0
  only_low = 0
  for image_id, dets in boxes.items():
    assert dets
    for d in dets:
      assert d['label'] == 'person' and 0.0 < d['score'] < 1.0
      x0, y0, x1, y1 = d['box']
      assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    n_high = sum(d['score'] >= 0.8 for d in dets)
    assert n_high <= 1
    confident += n_high
    only_low += n_high == 0
  assert confident == result['with_person'] > 0
  assert only_low > 0
  # Expressions and actions only occur where a person was drawn.
  for emotion, image_id, _, ann_path in rows:
    ann = _load(root / ann_path)
    if 'facial_expression' in ann or 'human_action' in ann:
      assert any(d['score'] >= 0.8 for d in boxes.get(image_id, []))


def test_three_field_layout(tmp_path, emoset):
  official_root, _ = emoset
  root = tmp_path / 'EmoSet3'
  result = demo.write_emoset(root, seed=0, per_class=TINY['emoset'],
                             image_size=TINY['image_size'], layout='three_field')
  info = _load(root / 'info.json')
  assert set(info) == {'label2idx', 'idx2label'}
  assert info['label2idx'] == {e: i for i, e in enumerate(EMOSET_CLASSES)}
  official = {r[2]: r for s in ('train', 'val', 'test')
              for r in _load(official_root / f'{s}.json')}
  for s in ('train', 'val', 'test'):
    rows = _load(root / f'{s}.json')
    assert len(rows) == result['counts'][s]
    for emotion, image_path, ann_path in rows:
      assert official[image_path] == [emotion, Path(image_path).stem, image_path, ann_path]
      # Same images and annotations as the official layout.
      assert (root / image_path).read_bytes() == (official_root / image_path).read_bytes()
      assert (root / ann_path).read_bytes() == (official_root / ann_path).read_bytes()
  with pytest.raises(ValueError, match='layout'):
    demo.write_emoset(tmp_path / 'x', layout='csv')


# ------------------------------------------------------------------------------ benchmarks

@pytest.mark.parametrize('name', sorted(BENCHMARKS))
def test_benchmark_layout(tmp_path, name):
  result = demo.write_benchmark(tmp_path, name, seed=0, per_class=(2, 1, 1),
                                image_size=(32, 24))
  bench = BENCHMARKS[name]
  out = tmp_path / bench.folder
  assert result['root'] == str(out)
  assert sorted(p.name for p in out.iterdir()) == ['test', 'train', 'val']
  for split, n in (('train', 2), ('val', 1), ('test', 1)):
    folders = sorted(p.name for p in (out / split).iterdir())
    assert tuple(folders) == bench.classes
    for cls in folders:
      files = sorted((out / split / cls).iterdir())
      assert len(files) == n and all(f.suffix == '.jpg' for f in files)
      with Image.open(files[0]) as im:
        assert im.size == (32, 24) and im.format == 'JPEG'
    assert result['counts'][split] == n * bench.num_classes


# ------------------------------------------------------------------------------ determinism

def _digest(root):
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(Path(root).rglob('*')) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
  a = demo.generate(tmp_path / 'a', seed=0, size='tiny')
  demo.generate(tmp_path / 'b', seed=0, size='tiny')
  demo.generate(tmp_path / 'c', seed=1, size='tiny')
  da, db, dc = (_digest(tmp_path / x) for x in 'abc')
  assert da == db
  assert len(da) > 100
  assert a['emoset']['images'] == 8 * sum(TINY['emoset'])
  assert a['benchmarks']['emo8']['images'] == 8 * sum(TINY['benchmark'])
  images = [k for k in da if k.endswith('.jpg')]
  differ = [k for k in images if dc.get(k) != da[k]]
  assert len(differ) == len(images)


# ------------------------------------------------------------------------------ drawing

def test_figure_box_holds_exactly_the_figure():
  size = (96, 72)
  for label in range(8):
    for k in range(3):
      seed = [label, k]
      with_p, box = demo.draw_image(label, np.random.default_rng(seed), size, person=True)
      without, none = demo.draw_image(label, np.random.default_rng(seed), size, person=False)
      assert none is None and with_p.size == size
      x0, y0, x1, y1 = box
      assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]
      assert y1 - y0 >= 0.3 * size[1]
      diff = np.abs(np.asarray(with_p, np.int16) - np.asarray(without, np.int16)).max(-1) > 0
      inside = np.zeros_like(diff)
      inside[y0:y1, x0:x1] = True
      assert not diff[~inside].any()                # nothing drawn outside the box
      assert diff[inside].mean() > 0.25             # the figure fills a good part of it
      ys, xs = np.nonzero(diff)                     # and the box is tight
      assert (xs.min(), ys.min()) == (x0, y0) and (xs.max() + 1, ys.max() + 1) == (x1, y1)


def test_draw_image_by_name_and_unknown_class():
  img, _ = demo.draw_image('joy', np.random.default_rng(0), (40, 30), person=False)
  assert img.size == (40, 30)
  with pytest.raises(KeyError, match='STYLE_ALIASES'):
    demo.draw_image('boredom', np.random.default_rng(0), (40, 30), person=False)


def test_bad_images_fail_to_decode(tmp_path):
  paths = demo.write_bad_images(tmp_path)
  assert sorted(Path(p).name for p in paths) == ['not_an_image.jpg', 'truncated.jpg',
                                                 'zero_bytes.jpg']
  assert Path(paths[0]).stat().st_size == 0
  for p in paths:
    with pytest.raises(OSError):        # UnidentifiedImageError is an OSError too
      with Image.open(p) as im:
        im.load()


def _random_crop_mean(img, rng):
  """Mean RGB of a random-resized-crop-like window (scale 0.2–1, aspect 3/4–4/3)."""
  arr = np.asarray(img, np.float32)
  h, w, _ = arr.shape
  area = rng.uniform(0.2, 1.0) * h * w
  ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
  cw = int(min(w, round(np.sqrt(area * ratio))))
  ch = int(min(h, round(np.sqrt(area / ratio))))
  x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
  return arr[y:y + ch, x:x + cw].reshape(-1, 3).mean(0)


def test_emo8_is_learnable_from_colour(tmp_path):
  per_class = (40, 0, 16)
  demo.write_benchmark(tmp_path, 'emo8', seed=0, per_class=per_class)
  root = tmp_path / 'emo8'
  names = BENCHMARKS['emo8'].classes
  rng = np.random.default_rng(0)

  def features(split):
    x, y = [], []
    for label, cls in enumerate(names):
      for f in sorted((root / split / cls).iterdir()):
        with Image.open(f) as im:
          x.append(_random_crop_mean(im.convert('RGB'), rng))
        y.append(label)
    return np.stack(x), np.asarray(y)

  x_train, y_train = features('train')
  x_test, y_test = features('test')
  assert len(y_test) == 8 * per_class[2]
  centroids = np.stack([x_train[y_train == k].mean(0) for k in range(8)])
  pred = np.argmin(((x_test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
  accuracy = (pred == y_test).mean()
  assert accuracy > 0.5, accuracy


def test_cli_writes_tiny_set(tmp_path, capsys):
  result = demo.main(['--out', str(tmp_path), '--size', 'tiny', '--seed', '3',
                      '--benchmarks', 'emo8,emotion6'])
  out = capsys.readouterr().out
  assert 'wrote' in out and ' s' in out
  assert (tmp_path / 'EmoSet' / 'info.json').exists()
  assert (tmp_path / 'benchmarks' / 'emo8' / 'train' / 'amusement').is_dir()
  assert (tmp_path / 'benchmarks' / 'Emotion6' / 'test' / 'surprise').is_dir()
  assert result['emoset']['counts'] == {'train': 32, 'val': 8, 'test': 8}


def _colour_histogram(im: Image.Image) -> np.ndarray:
  """A global colour statistic: the 4×4×4 RGB histogram (normalised) and the mean colour."""
  arr = np.asarray(im.convert('RGB'), np.float32)
  bins = (arr // 64).astype(int).reshape(-1, 3)
  hist = np.bincount(bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2], minlength=64)
  return np.concatenate([hist / hist.sum(), arr.reshape(-1, 3).mean(0) / 255])


def test_demo_cues_are_not_in_global_colour_statistics(tmp_path):
  """The demo's 'cues' drawing: a nearest-centroid classifier on global colour statistics
  (the one that separates the 'palette' drawing above) is near chance, while the cues that
  do tell the emotion (an object's shape and hue, the person) are drawn as documented."""
  demo.write_benchmark(tmp_path, 'emo8', seed=0, per_class=(40, 0, 16), image_size=(96, 96),
                       kind='cues')
  root = tmp_path / 'emo8'
  names = BENCHMARKS['emo8'].classes

  def features(split):
    x, y = [], []
    for label, cls in enumerate(names):
      for f in sorted((root / split / cls).iterdir()):
        with Image.open(f) as im:
          x.append(_colour_histogram(im))
        y.append(label)
    return np.stack(x), np.asarray(y)

  x_train, y_train = features('train')
  x_test, y_test = features('test')
  centroids = np.stack([x_train[y_train == k].mean(0) for k in range(8)])
  pred = np.argmin(((x_test[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
  assert (pred == y_test).mean() < 0.3  # chance 0.125; the palette drawing gives > 0.5


def test_demo_cues_drawing_and_annotations():
  for ci, emotion in enumerate(EMOSET_CLASSES):
    for j in range(6):
      rng = demo._rng(0, ci, j)
      person = j % 3 != 0
      img, box, info = demo.draw_cues(ci, rng, (96, 96), person)
      assert img.size == (96, 96) and (box is not None) == person
      if not person:  # without a person the emotion's object is always there
        assert demo.CUE_OBJECTS[emotion] in info['objects']
      else:
        assert info['pose'] == demo.POSE_ACTIONS[demo.PERSON_CUES[emotion][0]]
        assert info['expression'] == demo.CUE_EXPRESSIONS[emotion]
      assert set(info['objects']) <= {demo.CUE_OBJECTS[emotion], *demo.DISTRACTOR_OBJECTS}
  # Every (pose, mouth, brows) is one emotion's; every object and hue too.
  assert len(set(demo.PERSON_CUES.values())) == 8
  assert len(set(demo.CUE_OBJECTS.values())) == 8 and len(set(demo.CUE_HUES.values())) == 8


def test_demo_size_writes_captioned_cues(tmp_path):
  info = demo.write_emoset(tmp_path / 'EmoSet', seed=0, per_class=(2, 1, 1), image_size=(96, 96),
                           kind='cues')
  assert info['counts'] == {'train': 16, 'val': 8, 'test': 8}
  anns = [json.loads(p.read_text()) for p in (tmp_path / 'EmoSet' / 'annotation').rglob('*.json')]
  actions = {a['human_action'] for a in anns if 'human_action' in a}
  assert actions <= set(demo.POSE_ACTIONS.values())
  assert demo.SIZES['demo']['kind'] == 'cues'

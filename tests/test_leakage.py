"""tools.leakage: planted near-duplicates (resized, re-encoded, slightly cropped copies) of
pre-training images in a benchmark's test split are found, and nothing else is: the demo's
look-alike drawings of one class are never paired."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniemox_jax.data import builders
from uniemox_jax.data import demo
from uniemox_jax.tools import leakage

REPO = Path(__file__).resolve().parents[1]
SIZE = (128, 96)     # the demo's small size; real photographs are larger and easier


def _jpeg(im: Image.Image, quality: int = 90) -> bytes:
  buf = io.BytesIO()
  im.save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def _crop(im: Image.Image, left: float, top: float, right: float, bottom: float):
  w, h = im.size
  return im.crop((round(w * left), round(h * top), w - round(w * right),
                  h - round(h * bottom)))


# The kinds of copy a leak is made of: (name, transform, JPEG quality).
VARIANTS = (
    ('double', lambda im: im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC),
     90),
    ('half', lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
     90),
    ('quality30', lambda im: im, 30),
    ('crop4', lambda im: _crop(im, 0.04, 0.04, 0.04, 0.04), 90),
    ('right5', lambda im: _crop(im, 0, 0, 0.05, 0), 90),
    ('corner4', lambda im: _crop(im, 0.04, 0.04, 0, 0), 90),
    ('combo', lambda im: _crop(im, 0.02, 0.03, 0.02, 0.01).resize(
        (im.width * 3 // 4, im.height * 3 // 4)), 50),
)


def _variant_bytes(data: bytes, k: int) -> bytes:
  _, transform, quality = VARIANTS[k % len(VARIANTS)]
  with Image.open(io.BytesIO(data)) as im:
    return _jpeg(transform(im.convert('RGB')), quality)


@pytest.fixture(scope='module')
def planted(tmp_path_factory):
  """EmoSet and emo8 look-alikes with planted copies, prepared, and the CLI's report."""
  root = tmp_path_factory.mktemp('leakage')
  emoset = demo.write_emoset(root / 'EmoSet', per_class=(3, 1, 1), image_size=SIZE)
  demo.write_benchmark(root / 'bench', 'emo8', per_class=(2, 1, 2), image_size=SIZE)
  rows = {s: json.loads(Path(emoset['files'][s]).read_text()) for s in ('train', 'val',
                                                                        'test')}
  test_dir = root / 'bench' / 'emo8' / 'test'
  expected = set()     # (test id, EmoSet id)
  sources = rows['train'][::4][:len(VARIANTS) - 1] + rows['val'][:1]
  for k, (emotion, image_id, image_path, _) in enumerate(sources):
    name = f'{VARIANTS[k][0]}_{image_id}.jpg'
    target = test_dir / emotion / name
    target.write_bytes(_variant_bytes((root / 'EmoSet' / image_path).read_bytes(), k))
    expected.add((f'test/{target.parent.name}/{name}', image_id))
  # A copy of an EmoSet *test* image is no leak: pre-training reads train+val only.
  _, test_id, test_path, _ = rows['test'][0]
  (test_dir / 'fear' / 'from_emoset_test.jpg').write_bytes(
      _variant_bytes((root / 'EmoSet' / test_path).read_bytes(), 0))
  # Inside the benchmark: a byte copy of a train image, a re-encoded copy of a val image.
  shutil.copy(root / 'bench/emo8/train/awe/awe_00001.jpg', test_dir / 'sadness' / 'dup.jpg')
  (test_dir / 'anger' / 'reencoded.jpg').write_bytes(_jpeg(
      Image.open(root / 'bench/emo8/val/disgust/disgust_00003.jpg').convert('RGB'), 40))
  tfds_dir = root / 'tfds'
  builders.prepare('emoset', root / 'EmoSet', tfds_dir)
  builders.prepare('emo8', root / 'bench', tfds_dir)
  out = root / 'report'
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  p = subprocess.run(
      [sys.executable, '-m', 'uniemox_jax.tools.leakage', '--pretrain=emoset',
       '--benchmarks=emo8', f'--data_dir={tfds_dir}', f'--out={out}', '--num_workers=1'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  return dict(root=root, tfds=tfds_dir, out=out, expected=expected, test_id=test_id,
              stdout=p.stdout, report=json.loads((out / 'leakage.json').read_text()))


def test_planted_copies_are_found_and_nothing_else(planted):
  report = planted['report']
  pre = {(p['a_id'], p['b_id']) for p in report['pairs'] if p['kind'] == 'pretrain'}
  assert pre == planted['expected']
  assert not any(planted['test_id'] in p['b_id'] for p in report['pairs'])
  for p in report['pairs']:
    if p['kind'] == 'pretrain':
      assert p['hamming'] <= 12 and 0 <= p['residual'] <= 6.0 and not p['exact']
  within = {(p['kind'], p['a_id'], p['b_split'], p['b_id']) for p in report['pairs']
            if p['kind'] != 'pretrain'}
  assert within == {('within-exact', 'test/sadness/dup.jpg', 'train', 'train/awe/awe_00001.jpg'),
                    ('within-near', 'test/anger/reencoded.jpg', 'val',
                     'val/disgust/disgust_00003.jpg')}
  e = report['benchmarks']['emo8']
  n = len(planted['expected'])
  assert e['test_images'] == 8 * 2 + n + 3
  assert (e['near_duplicates'], e['test_images_with_duplicates'], e['exact_duplicates']) == \
      (n, n, 0)
  assert e['within'] == {'exact_across_splits': 1, 'candidates': e['within']['candidates'],
                         'near_test_vs_trainval': 1, 'test_images_with_duplicates': 1}
  assert report['pretrain'] == {'train': 24, 'val': 8}
  assert f'emo8              {e["test_images"]}' in planted['stdout']


def test_one_planted_copy_from_val_is_matched_to_val(planted):
  pre = [p for p in planted['report']['pairs'] if p['kind'] == 'pretrain']
  assert sorted(p['b_split'] for p in pre) == ['train'] * (len(pre) - 1) + ['val']


def test_csv_and_sheet(planted):
  out = planted['out']
  with open(out / 'pairs.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [(r['kind'], r['a_id'], r['b_id']) for r in rows] == \
      [(p['kind'], p['a_id'], p['b_id']) for p in planted['report']['pairs']]
  with Image.open(out / 'closest_pairs.png') as im:
    assert im.format == 'PNG' and im.height > 24 * 100 and im.width > 600
  assert sorted(p.name for p in (out / 'hashes').iterdir()) == sorted(
      [f'emoset-{s}.npz' for s in ('train', 'val')]
      + [f'emotion_folder-emo8-{s}.npz' for s in ('train', 'val', 'test')])


def test_library_reuses_hashes_and_threshold_zero_keeps_only_unchanged_layouts(planted,
                                                                               tmp_path):
  out = tmp_path / 'r'
  shutil.copytree(planted['out'] / 'hashes', out / 'hashes')
  r = leakage.find_leakage('emoset', ['emo8'], planted['tfds'], out, threshold=0,
                           num_workers=1, sheet_pairs=4)
  pre = {(p['a_id'], p['b_id']) for p in r['pairs'] if p['kind'] == 'pretrain'}
  assert pre and pre < planted['expected']
  with Image.open(out / 'closest_pairs.png') as im:
    assert im.height < 6 * 120


def test_distinct_look_alikes_are_never_paired_and_copies_always_are():
  """The figures the defaults rest on (demo drawings, 8 classes x 24, 128x96)."""
  data = []
  for ci in range(8):
    for j in range(24):
      rng = demo._rng(7, 99, ci, j)   # pylint: disable=protected-access
      im, _ = demo.draw_image(ci, rng, SIZE, person=rng.uniform() < 0.75)
      data.append(_jpeg(im))
  canvases = [leakage.canvas(d) for d in data]
  hashes = np.stack([leakage.phashes(c) for c in canvases])
  pairs, _, _ = leakage.match(hashes, hashes, leakage.DEFAULT_THRESHOLD)
  pairs = pairs[pairs[:, 0] < pairs[:, 1]]
  assert len(pairs) > 10    # the hash alone does pair look-alikes...
  residuals = [leakage.residual(canvases[i], canvases[j]) for i, j, _ in pairs]
  assert min(residuals) > leakage.DEFAULT_MAX_RESIDUAL + 1.0   # ...the verification never
  worst_hash, worst_residual = 0, 0.0
  for n, d in enumerate(data[::6]):
    for k in range(len(VARIANTS)):
      c = leakage.canvas(_variant_bytes(d, k))
      worst_hash = max(worst_hash, leakage.hash_distance(hashes[n * 6], leakage.phashes(c)))
      worst_residual = max(worst_residual, leakage.residual(canvases[n * 6], c))
  assert worst_hash <= leakage.DEFAULT_THRESHOLD - 2
  assert worst_residual < leakage.DEFAULT_MAX_RESIDUAL - 1.0


def test_hash_and_thumbnail_invariants():
  rng = np.random.default_rng(0)
  img = rng.uniform(0, 255, (leakage.CANVAS, leakage.CANVAS, 3)).astype(np.float32)
  h = leakage.phashes(img)
  assert h.shape == (len(leakage.HASH_CROPS),) and h.dtype == np.uint64
  assert leakage.hash_distance(h, h) == 0 and leakage.residual(img, img) == 0.0
  other = leakage.phashes(img[::-1])
  assert leakage.hash_distance(h, other) == leakage.hash_distance(other, h) > 16
  # The separable box filter equals the box-filter matrices applied directly.
  # pylint: disable=protected-access
  maps = np.stack([leakage._box_matrix(leakage.THUMB, leakage.CANVAS, a, 1 - b)
                   for a, b in leakage._CUT_PAIRS])
  want = np.einsum('picx,qjc->pqijx', np.einsum('pir,rcx->picx', maps, img), maps)
  np.testing.assert_allclose(leakage._thumbnails(img), want, atol=1e-3)
  whole = np.asarray(Image.fromarray(img.astype(np.uint8)).resize(
      (leakage.THUMB, leakage.THUMB), Image.Resampling.BOX), np.float32)
  rounded = img.astype(np.uint8).astype(np.float32)
  assert np.abs(leakage._thumbnails(rounded)[0, 0] - whole).max() <= 1.0


def test_cli_errors_name_the_problem(planted, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  cases = [
      (['--benchmarks=emo9', f'--data_dir={planted["tfds"]}'], "'emo9'"),
      (['--benchmarks=fi', f'--data_dir={planted["tfds"]}'],
       'python -m uniemox_jax.tools.prepare --dataset=emotion_folder/fi'),
      (['--benchmarks=emo8', f'--data_dir={planted["tfds"]}', '--threshold=70'],
       '--threshold must be 0..64'),
  ]
  for args, needle in cases:
    p = subprocess.run([sys.executable, '-m', 'uniemox_jax.tools.leakage', *args,
                        f'--out={tmp_path / "o"}'], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and 'Traceback' not in p.stderr, p.stderr[-2000:]
    assert 'error: ' in p.stderr and needle in p.stderr, p.stderr[-2000:]

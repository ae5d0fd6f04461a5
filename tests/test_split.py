"""tools.split: seeded, stratified splits with the authors' ratios, written as the tree the
emotion_folder builder reads, with a manifest whose hash the prepared data reproduces."""
import json
import os
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from uniemox_jax.data import builders
from uniemox_jax.data import demo
from uniemox_jax.data.classes import BENCHMARKS, SPLITS
from uniemox_jax.tools import split

REPO = Path(__file__).resolve().parents[1]


def _raw(root: Path, classes, n: int, *, order=None, folder=str) -> Path:
  """``root/<folder(class)>/<class>_<i>.jpg`` (placeholder bytes: split reads no pixels),
  created in ``order`` (a permutation of range(n)) to vary the filesystem's order."""
  for cls in classes:
    d = root / folder(cls)
    d.mkdir(parents=True, exist_ok=True)
    for i in (order if order is not None else range(n)):
      (d / f'{cls}_{i:03d}.jpg').write_bytes(b'x')
  return root


def _ids(manifest, split_name, cls):
  return [i for i in manifest['splits'][split_name] if i.split('/')[1] == cls]


def test_class_counts_by_hand():
  assert split.class_counts(40, (0.8, 0.05, 0.15)) == [32, 2, 6]
  assert split.class_counts(10, (0.8, 0.05, 0.15)) == [8, 1, 1]     # tie: val before test
  assert split.class_counts(13, (0.7, 0.1, 0.2)) == [9, 1, 3]
  assert split.class_counts(3, (0.8, 0.1, 0.1)) == [1, 1, 1]        # one per split from 3
  assert split.class_counts(2, (0.7, 0.1, 0.2)) == [2, 0, 0]
  assert split.class_counts(50, (0.34, 0.66)) == [17, 33]
  for n in range(60):
    for fr in list(split.RATIOS.values()) + [split.CAER_S_TEST_SPLIT]:
      c = split.class_counts(n, fr)
      assert sum(c) == n and min(c) >= 0
      assert all(abs(ci - n * f) < 1.0 + (n >= len(fr)) for ci, f in zip(c, fr))


@pytest.mark.parametrize('name,per_split', [
    ('emo8', (32, 4, 4)), ('fi', (32, 2, 6)), ('emotion6', (28, 4, 8)),
    ('unbiasedemo', (28, 4, 8)), ('heco', (28, 4, 8))])
def test_authors_ratios_per_class_and_every_image_once(tmp_path, name, per_split):
  bench = BENCHMARKS[name]
  m = split.make_split(name, _raw(tmp_path / 'raw', bench.classes, 40))
  for cls in bench.classes:
    assert tuple(m['counts'][s][cls] for s in SPLITS) == per_split
    ids = [i for s in SPLITS for i in _ids(m, s, cls)]
    names = sorted(i.rsplit('/', 1)[1] for i in ids)
    assert names == [f'{cls}_{i:03d}.jpg' for i in range(40)]    # each exactly once
  for s in SPLITS:
    assert all(i.startswith(f'{s}/') for i in m['splits'][s])
    assert [src.split('/')[0] for src in m['sources'][s]] == \
        [i.split('/')[1] for i in m['splits'][s]]
  assert m['ratios'] == dict(zip(SPLITS, split.RATIOS[name]))
  assert m['hash'] == split.manifest_hash(m['splits'])


def test_same_seed_same_split_on_any_file_order_and_golden(tmp_path):
  classes = BENCHMARKS['emotion6'].classes
  a = _raw(tmp_path / 'a', classes, 10)
  b = _raw(tmp_path / 'b', classes, 10, order=[7, 2, 9, 0, 5, 1, 8, 3, 6, 4],
           folder=str.upper)    # other creation order, and upper-case class folders
  ma, mb = split.make_split('emotion6', a), split.make_split('emotion6', b)
  assert ma['splits'] == mb['splits'] and ma['hash'] == mb['hash']
  assert split.make_split('emotion6', a, seed=1)['hash'] != ma['hash']
  # Pinned: a change of the rule or of NumPy's PCG64 stream would move every split.
  # (The same on Python 3.11/NumPy 2.4 and Python 3.12/NumPy 2.5.)
  assert _ids(ma, 'test', 'anger') == ['test/anger/anger_002.jpg', 'test/anger/anger_009.jpg']
  assert _ids(ma, 'val', 'anger') == ['val/anger/anger_008.jpg']
  assert ma['hash'] == '59a15e565f873d44af30d7b03ce7a1df06dbd588424c4e48b36a87b99cfdbc32'


def test_unicode_names_are_normalised(tmp_path):
  name = 'café_1.jpg'
  for sub, form in (('nfc', 'NFC'), ('nfd', 'NFD')):
    _raw(tmp_path / sub, BENCHMARKS['emotion6'].classes, 4)
    (tmp_path / sub / 'joy' / unicodedata.normalize(form, name)).write_bytes(b'x')
  nfc = split.make_split('emotion6', tmp_path / 'nfc')
  nfd = split.make_split('emotion6', tmp_path / 'nfd')
  assert nfc['hash'] == nfd['hash']
  assert any(i.endswith(unicodedata.normalize('NFC', name)) for s in SPLITS
             for i in nfd['splits'][s])


def test_caer_s_keeps_official_train_and_splits_test_66_34(tmp_path):
  classes = BENCHMARKS['caer_s'].classes
  _raw(tmp_path / 'raw' / 'train', classes, 12, folder=str.capitalize)
  _raw(tmp_path / 'raw' / 'test', classes, 50, folder=str.capitalize)
  m = split.make_split('caer_s', tmp_path / 'raw')
  for cls in classes:
    assert (m['counts']['train'][cls], m['counts']['val'][cls], m['counts']['test'][cls]) \
        == (12, 17, 33)
  train_src = set(m['sources']['train'])
  assert train_src == {f'train/{c.capitalize()}/{c}_{i:03d}.jpg' for c in classes
                       for i in range(12)}
  assert all(s.startswith('test/') for k in ('val', 'test') for s in m['sources'][k])
  assert not set(m['sources']['val']) & set(m['sources']['test'])


def _raw_from_demo(tmp_path: Path, name: str) -> Path:
  """Demo images of a benchmark moved into ``raw/<Class>/`` (no split)."""
  info = demo.write_benchmark(tmp_path / 'demo', name, per_class=(3, 1, 1),
                              image_size=(32, 24))
  raw = tmp_path / 'raw'
  for path in sorted(Path(info['root']).rglob('*.jpg')):
    dst = raw / path.parent.name.capitalize() / path.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, dst)
  (raw / 'Joy' / 'notes.txt').write_text('not an image')
  (raw / 'Joy' / '.DS_Store').write_bytes(b'\0')
  return raw


def test_link_tree_prepares_and_the_tfds_ids_reproduce_the_hash(tmp_path):
  raw = _raw_from_demo(tmp_path, 'emotion6')
  m = split.split_dataset('emotion6', raw, tmp_path / 'bench', seed=3)
  ds = Path(m['dataset_dir'])
  assert ds == tmp_path / 'bench' / 'Emotion6' and not m['reused']
  assert m['ignored'] == ['Joy/notes.txt']
  for s in SPLITS:
    for image_id, src in zip(m['splits'][s], m['sources'][s]):
      p = ds / image_id
      assert p.is_symlink() and os.readlink(p) == str(raw / src)
  on_disk = split.read_manifest(ds)
  assert on_disk['hash'] == m['hash'] and on_disk['seed'] == 3 and on_disk['mode'] == 'link'
  assert split.dataset_hash(ds) == m['hash'] and split.dataset_hash(tmp_path) is None
  b = builders.prepare('emotion6', tmp_path / 'bench', tmp_path / 'tfds')
  assert {s: b.info.splits[s].num_examples for s in SPLITS} == m['totals']
  ids = {s: builders.load_source('emotion6', s, tmp_path / 'tfds').example_ids
         for s in SPLITS}
  assert split.manifest_hash(ids) == m['hash']
  # Run again: the same split is kept; another seed is refused, naming the folder.
  again = split.split_dataset('emotion6', raw, tmp_path / 'bench', seed=3)
  assert again['reused'] and again['hash'] == m['hash']
  with pytest.raises(split.SplitError, match=r'Emotion6: already exists .*\(seed 3'):
    split.split_dataset('emotion6', raw, tmp_path / 'bench', seed=4)


def test_copy_mode_copies_and_edits_are_detected(tmp_path):
  raw = _raw_from_demo(tmp_path, 'emotion6')
  m = split.split_dataset('emotion6', raw, tmp_path / 'bench', mode='copy')
  ds = Path(m['dataset_dir'])
  first = ds / m['splits']['train'][0]
  assert not first.is_symlink() and first.read_bytes() == (raw / m['sources']['train'][0]) \
      .read_bytes()
  assert sorted(p.name for p in ds.iterdir()) == sorted([*SPLITS, split.MANIFEST_NAME])
  assert not list((tmp_path / 'bench').glob('.*partial*'))
  path = ds / split.MANIFEST_NAME
  data = json.loads(path.read_text())
  data['splits']['test'].append('test/joy/extra.jpg')
  path.write_text(json.dumps(data))
  with pytest.raises(split.SplitError, match='does not match its id lists'):
    split.read_manifest(ds)


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, '-m', 'uniemox_jax.tools.split', *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=60)


def test_cli_writes_the_tree(tmp_path):
  raw = _raw(tmp_path / 'raw', BENCHMARKS['fi'].classes, 20)
  p = _cli('--dataset=fi', f'--raw_dir={raw}', f'--out={tmp_path / "out"}', '--seed=0')
  assert p.returncode == 0, p.stderr
  m = split.read_manifest(tmp_path / 'out' / 'FI')
  assert f'hash {m["hash"]}' in p.stdout and ' 128 images' in p.stdout
  assert m['totals'] == {'train': 128, 'val': 8, 'test': 24}


def test_cli_errors_are_one_line(tmp_path):
  fi = BENCHMARKS['fi'].classes
  good = _raw(tmp_path / 'good', fi, 3)
  wrong = _raw(tmp_path / 'wrong', fi[:-1] + ('sorrow',), 3)
  empty = _raw(tmp_path / 'empty', fi, 3)
  for f in (empty / 'awe').iterdir():
    f.unlink()
  (empty / 'awe' / 'readme.txt').write_text('x')
  out = f'--out={tmp_path / "out"}'
  cases = [
      (('--dataset=fi', f'--raw_dir={tmp_path / "nothere"}', out),
       [str(tmp_path / 'nothere'), 'raw directory not found', 'amusement']),
      (('--dataset=fii', f'--raw_dir={good}', out), ["'fii'", 'emotion6']),
      (('--dataset=fi', f'--raw_dir={wrong}', out),
       [str(wrong), 'missing: sadness', 'unexpected: sorrow']),
      (('--dataset=fi', f'--raw_dir={empty}', out), [str(empty / 'awe'), 'no image files']),
      (('--dataset=caer_s', f'--raw_dir={good}', out), [str(good), 'train/ and test/']),
      (('--dataset=fi', f'--raw_dir={good}', out, '--seed=-1'), ['seed must be']),
  ]
  for args, needles in cases:
    p = _cli(*args)
    assert p.returncode == 2, (args, p.returncode)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), p.stderr
    assert 'Traceback' not in p.stderr
    for needle in needles:
      assert needle in lines[0], (needle, lines[0])
  assert not (tmp_path / 'out').exists()

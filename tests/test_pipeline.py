"""Grain input pipelines (uniemox_jax.data.pipeline): views, captions, determinism, exact resume,
per-epoch shuffling, multi-process sharding and evaluation that sees every example once.

Data: the demo EmoSet look-alike prepared with the real builder (24 train records, 64×48 JPEGs),
and hand-made records whose pixels make the property under test visible (a person box in one
colour, the rest in another). Worker processes are tested too (they start in about 2 s here).
"""
import copy
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniemox_jax.data import builders, demo, pipeline
from uniemox_jax.data import tokenizer as tokenizer_lib
from uniemox_jax.data import transforms as T

REPO = Path(__file__).resolve().parents[1]
SIZE = 32                  # output views, pixels
BATCH = 8                  # global batch: 24 train records = 3 batches per epoch
BOX_COLOUR = (230, 200, 10)
BACKGROUND = (20, 40, 200)


@pytest.fixture(scope='module')
def emoset(tmp_path_factory):
  """The demo EmoSet prepared with its person boxes, and a tiny vocabulary of its captions."""
  tmp = tmp_path_factory.mktemp('pipeline')
  info = demo.write_emoset(tmp / 'EmoSet', per_class=(3, 1, 1), image_size=(64, 48))
  data_dir = tmp / 'tfds'
  builders.prepare('emoset', info['root'], data_dir, person_boxes=info['files']['person_boxes'])
  train = builders.load_source('emoset', 'train', data_dir)
  captions = [train[i]['caption'] for i in range(len(train))]
  vocab = tokenizer_lib.write_tiny_vocab(tmp / 'vocab', captions, num_merges=100)
  return dict(train=train, test=builders.load_source('emoset', 'test', data_dir),
              vocab=str(vocab))


def _encode(arr: np.ndarray, fmt: str = 'PNG') -> bytes:
  # JPEG without chroma subsampling: 4:2:0 would bleed colour a few pixels across the box edge.
  options = dict(quality=95, subsampling=0) if fmt == 'JPEG' else {}
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format=fmt, **options)
  return buf.getvalue()


def _boxed_record(fmt='PNG', has_person=True, box=(0.25, 0.5, 0.75, 0.875), w=64, h=48):
  """A record like the builder's: the normalised box `[y0, x0, y1, x1]` is BOX_COLOUR, the rest
  BACKGROUND. The box is 24×24 px, 19% of the image: smaller than the smallest crop (20%)."""
  arr = np.empty((h, w, 3), np.uint8)
  arr[:] = BACKGROUND
  y0, x0, y1, x1 = box
  arr[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)] = BOX_COLOUR
  return dict(image=_encode(arr, fmt), has_person=has_person,
              person_box=np.asarray(box, np.float32), label=3,
              caption='The overall emotion conveyed is excitement.')


def _box_fraction(view: np.ndarray, tol: int) -> float:
  """Fraction of the pixels of `view` within `tol` of BOX_COLOUR in every channel."""
  diff = np.abs(view.astype(np.int32) - np.asarray(BOX_COLOUR))
  return float(np.mean(np.all(diff <= tol, axis=-1)))


def _list_source(n: int, size=(12, 10)):
  """`n` small PNG records; record i has label i % 8 and a flat colour that encodes i."""
  records = []
  for i in range(n):
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = i % 256, (7 * i) % 256, 128
    records.append(dict(image=_encode(arr), label=i % 8, has_person=False,
                        person_box=np.zeros(4, np.float32), caption=f'image {i}'))
  return records


def _batches(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]), err_msg=key)


def _pretrain(emoset, tokenizer=False, **kw):
  return pipeline.PretrainTransform(SIZE, emoset['vocab'] if tokenizer else None, **kw)


# ------------------------------------------------------------------------------- pre-training

def test_pretrain_batches_have_two_uint8_views_and_caption_ids(emoset):
  source = emoset['train']
  ds = pipeline.train_dataset(source, _pretrain(emoset, tokenizer=True), global_batch=BATCH,
                              seed=0)
  batch = next(pipeline.to_iter(ds))
  assert batch['scene'].shape == batch['person'].shape == (BATCH, SIZE, SIZE, 3)
  assert batch['scene'].dtype == batch['person'].dtype == np.uint8
  assert batch['caption_ids'].shape == (BATCH, 77) and batch['caption_ids'].dtype == np.int32
  assert batch['caption_truncated'].dtype == np.bool_ and not batch['caption_truncated'].any()
  assert batch['index'].dtype == np.int64 and batch['label'].dtype == np.int32
  tok = tokenizer_lib.load_tokenizer(emoset['vocab'])
  for row, index in enumerate(batch['index']):
    record = source[int(index)]
    assert batch['label'][row] == record['label']
    expected, _ = tokenizer_lib.tokenize(tok, [record['caption']], 77)
    np.testing.assert_array_equal(batch['caption_ids'][row], expected[0])
  assert (batch['caption_ids'][:, 0] == tok.bos_token_id).all()


def test_caption_field_and_long_captions(emoset):
  tok = tokenizer_lib.load_tokenizer(emoset['vocab'])
  record = dict(_boxed_record(), caption='the scene type ' * 200, caption_no_emotion='a sky.')
  out = _pretrain(emoset, tokenizer=True)((0, record), np.random.default_rng(0))
  assert out['caption_ids'].shape == (77,) and out['caption_ids'].dtype == np.int32
  assert out['caption_truncated'] is True
  assert out['caption_ids'][0] == tok.bos_token_id and out['caption_ids'][-1] == tok.eos_token_id
  out = _pretrain(emoset, tokenizer=True, caption_field='caption_no_emotion')(
      (0, record), np.random.default_rng(0))
  assert out['caption_truncated'] is False
  np.testing.assert_array_equal(out['caption_ids'],
                                tokenizer_lib.tokenize(tok, ['a sky.'], 77)[0][0])


def test_transform_options_are_checked():
  with pytest.raises(ValueError, match='person_view'):
    pipeline.PretrainTransform(SIZE, None, person_view='yolo')
  with pytest.raises(ValueError, match='caption_field'):
    pipeline.PretrainTransform(SIZE, None, caption_field='text')


@pytest.mark.parametrize('width,height', [(64, 48), (48, 64), (200, 20), (20, 200), (3, 3)])
@pytest.mark.parametrize('scale', [(0.2, 1.0), (0.08, 1.0), (0.9, 1.0)])
def test_crop_boxes_stay_inside_the_image(width, height, scale):
  for seed in range(300):
    x0, y0, w, h = T.random_resized_crop_params(np.random.default_rng(seed), width, height,
                                                scale)
    assert 0 <= x0 and 0 <= y0 and w >= 1 and h >= 1
    assert x0 + w <= width and y0 + h <= height


def test_views_read_no_pixel_outside_the_image():
  # A flat image, and a person box covering all of it: a view that sampled padding or a fill
  # colour (a crop box past the border, an affine warp) would change some pixel. The crop
  # boxes themselves are checked above.
  arr = np.empty((48, 64, 3), np.uint8)
  arr[:] = BOX_COLOUR
  record = dict(_boxed_record(), image=_encode(arr), person_box=np.asarray([0, 0, 1, 1], 'f4'))
  transform = pipeline.PretrainTransform(SIZE, None)
  for seed in range(30):
    out = transform((0, record), np.random.default_rng(seed))
    for view in ('scene', 'person'):
      assert (out[view] == np.asarray(BOX_COLOUR, np.uint8)).all(), (seed, view)


@pytest.mark.parametrize('fmt,tol,min_fraction', [('PNG', 0, 1.0), ('JPEG', 8, 0.99)])
def test_person_view_comes_from_the_person_box(fmt, tol, min_fraction):
  record = _boxed_record(fmt)
  detector = pipeline.PretrainTransform(SIZE, None, person_view='detector_crop')
  second = pipeline.PretrainTransform(SIZE, None, person_view='second_view')
  second_fractions, scene_fractions = [], []
  for seed in range(40):
    out = detector((0, record), np.random.default_rng(seed))
    assert _box_fraction(out['person'], tol) >= min_fraction, seed
    scene_fractions.append(_box_fraction(out['scene'], tol))
    # The released code's person view: a second crop of the whole image. Every crop is larger
    # than the box, so it always shows background.
    out = second((0, record), np.random.default_rng(seed))
    second_fractions.append(_box_fraction(out['person'], tol))
  assert max(second_fractions) < 0.9 and np.mean(second_fractions) < 0.5
  assert max(scene_fractions) < 0.9


def test_second_view_is_a_crop_of_the_image_squashed_to_416():
  # The released code: resize((416, 416), bilinear), then the same RRC + flip as the scene.
  record = _boxed_record()
  image = T.decode(record['image'])
  transform = pipeline.PretrainTransform(SIZE, None, person_view='second_view')
  squashed = image.resize((416, 416), T.BILINEAR)
  for seed in range(5):
    out = transform((0, record), np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    np.testing.assert_array_equal(out['scene'], transform.view(image, rng))
    np.testing.assert_array_equal(out['person'], transform.view(squashed, rng))


def test_person_view_is_the_augmented_box_or_the_whole_image():
  transform = pipeline.PretrainTransform(SIZE, None)
  for has_person in (True, False):
    record = _boxed_record(has_person=has_person)
    image = T.decode(record['image'])
    region = (32, 12, 56, 36) if has_person else None
    assert pipeline.person_region(record, image.width, image.height) == region
    for seed in range(5):
      out = transform((7, record), np.random.default_rng(seed))
      rng = np.random.default_rng(seed)
      np.testing.assert_array_equal(out['scene'], transform.view(image, rng))
      np.testing.assert_array_equal(out['person'], transform.view(image, rng, region=region))
      assert out['index'] == 7 and out['label'] == 3
      if not has_person:   # the whole image: the box colour never fills the view
        assert _box_fraction(out['person'], 0) < 0.9


@pytest.mark.parametrize('box,has_person', [
    ([0.5, 0.5, 0.5, 0.9], True),          # zero height
    ([0.2, 0.2, 0.205, 0.9], True),        # inside one pixel row (9.6–9.84 of 48)
    ([0.9, 0.9, 0.1, 0.1], True),          # inverted
    ([1.2, 1.1, 1.5, 1.6], True),          # entirely outside: empty after clipping
    ([-0.5, -0.5, -0.1, -0.2], True),
    ([0.1, 0.1, 0.9, 0.9], False),         # a box, but no person
])
def test_person_region_of_degenerate_boxes_is_none(box, has_person):
  record = dict(has_person=has_person, person_box=np.asarray(box, np.float32))
  assert pipeline.person_region(record, 64, 48) is None


def test_person_region_is_clipped_and_grows_outwards():
  record = dict(has_person=True, person_box=np.asarray([-0.1, 0.501, 0.5, 1.3], np.float32))
  assert pipeline.person_region(record, 64, 48) == (32, 0, 64, 24)


def test_builder_person_boxes_give_regions_inside_the_image(emoset):
  source = emoset['train']
  with_person = 0
  for i in range(len(source)):
    record = source[i]
    image = T.decode(record['image'])
    region = pipeline.person_region(record, image.width, image.height)
    if record['has_person']:
      with_person += 1
      x0, y0, x1, y1 = region
      assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
    else:
      assert region is None
  assert with_person > 0


# ------------------------------------------------------------------------ determinism, resume

def test_same_seed_same_batches_other_seed_other_batches(emoset):
  def first(seed):
    ds = pipeline.train_dataset(emoset['train'], _pretrain(emoset), global_batch=BATCH,
                                seed=seed)
    return _batches(pipeline.to_iter(ds), 4)
  a, b, c = first(0), first(0), first(1)
  _assert_batches_equal(a, b)
  assert not all(np.array_equal(x['index'], y['index']) for x, y in zip(a, c))
  assert not all(np.array_equal(x['scene'], y['scene']) for x, y in zip(a, c))


@pytest.mark.parametrize('num_workers', [0, 1])
def test_iterator_state_restores_exactly_the_next_batches(emoset, num_workers):
  ds = pipeline.train_dataset(emoset['train'], _pretrain(emoset, tokenizer=True),
                              global_batch=BATCH, seed=3)
  it = pipeline.to_iter(ds, num_workers)
  _batches(it, 2)
  state = copy.deepcopy(it.get_state())
  json.dumps(state)  # what the checkpoint stores
  expected = _batches(it, 2)   # crosses into the second epoch
  fresh = pipeline.to_iter(ds, num_workers)
  fresh.set_state(state)
  _assert_batches_equal(_batches(fresh, 2), expected)


def test_batch_iterator_state_follows_the_returned_batches(emoset):
  ds = pipeline.train_dataset(emoset['train'], _pretrain(emoset), global_batch=BATCH, seed=5)

  def restored(state):
    it = pipeline.to_iter(ds)
    it.set_state(state)
    return it

  batches = pipeline.BatchIterator(pipeline.to_iter(ds), lambda b: b, prefetch=3)
  try:
    s0 = copy.deepcopy(batches.get_state())
    peeked = batches.peek()
    assert batches.get_state() == s0            # peek does not move it...
    assert batches.peek() is peeked
    b1 = next(batches)                          # ...and next returns what was peeked
    assert b1 is peeked
    s1 = copy.deepcopy(batches.get_state())
    b2 = next(batches)
    s2 = copy.deepcopy(batches.get_state())
    # The prefetch thread has read ahead by now; the state is still that of b2.
    _assert_batches_equal([next(restored(s0))], [b1])
    _assert_batches_equal([next(restored(s1))], [b2])
    b3 = next(batches)
    _assert_batches_equal([next(restored(s2))], [b3])
  finally:
    batches.close()
  # Built on a restored iterator, its first state is the restored one.
  resumed = pipeline.BatchIterator(restored(s1), lambda b: b)
  try:
    assert resumed.get_state() == s1
    _assert_batches_equal([next(resumed)], [b2])
  finally:
    resumed.close()


def test_batch_iterator_stops_and_keeps_stopping():
  ds = pipeline.eval_dataset(_list_source(5), pipeline.EvalTransform(8), global_batch=4)
  batches = pipeline.BatchIterator(pipeline.to_iter(ds), lambda b: b)
  try:
    assert len(list(batches)) == 2
    for _ in range(2):
      with pytest.raises(StopIteration):
        batches.peek()
      with pytest.raises(StopIteration):
        next(batches)
  finally:
    batches.close()


def test_every_epoch_is_a_new_permutation(emoset):
  n = len(emoset['train'])
  ds = pipeline.train_dataset(emoset['train'], _pretrain(emoset), global_batch=BATCH, seed=0)
  order = np.concatenate([b['index'] for b in _batches(pipeline.to_iter(ds), 3 * n // BATCH)])
  epochs = order.reshape(3, n)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  # A finite run ends after its epochs, the last partial batch dropped.
  finite = pipeline.train_dataset(emoset['train'], _pretrain(emoset), global_batch=BATCH,
                                  seed=0, num_epochs=2)
  assert len(list(pipeline.to_iter(finite))) == 2 * n // BATCH


def test_train_dataset_errors():
  with pytest.raises(ValueError, match='fewer than one global batch'):
    pipeline.train_dataset(_list_source(3), pipeline.FinetuneTransform(8), global_batch=4,
                           seed=0)
  with pytest.raises(ValueError, match='not divisible'):
    pipeline.train_dataset(_list_source(8), pipeline.FinetuneTransform(8), global_batch=6,
                           seed=0, shard=pipeline.Sharding(0, 4))


# ------------------------------------------------------------------------------ multi-process

def test_processes_split_each_global_batch_and_augment_alike(emoset):
  transform = _pretrain(emoset, tokenizer=True)
  single = _batches(pipeline.to_iter(pipeline.train_dataset(
      emoset['train'], transform, global_batch=BATCH, seed=7)), 5)
  shards = [_batches(pipeline.to_iter(pipeline.train_dataset(
      emoset['train'], transform, global_batch=BATCH, seed=7,
      shard=pipeline.Sharding(p, 2))), 5) for p in range(2)]
  for b, whole in enumerate(single):
    parts = [shards[p][b] for p in range(2)]
    assert all(len(part['index']) == BATCH // 2 for part in parts)
    union = np.concatenate([part['index'] for part in parts])
    assert len(set(union.tolist())) == BATCH                      # disjoint
    assert set(union.tolist()) == set(whole['index'].tolist())
    # Same example, same position in the stream: the same augmentation on either process.
    row_of = {int(i): r for r, i in enumerate(whole['index'])}
    for part in parts:
      for r, index in enumerate(part['index']):
        for key in ('scene', 'person', 'caption_ids', 'label'):
          np.testing.assert_array_equal(part[key][r], whole[key][row_of[int(index)]])


# ----------------------------------------------------------------------------------- evaluation

@pytest.mark.parametrize('n', [17, 5, 3, 16, 1])    # remainder, < one batch, < processes, exact
@pytest.mark.parametrize('processes', [1, 4])
def test_evaluation_sees_every_example_exactly_once(n, processes):
  source = _list_source(n)
  global_batch = 8
  local = global_batch // processes
  seen, counts = [], []
  for p in range(processes):
    shard = pipeline.Sharding(p, processes)
    ds = pipeline.eval_dataset(source, pipeline.EvalTransform(8), global_batch=global_batch,
                               shard=shard)
    batches = list(pipeline.to_iter(ds))
    counts.append(len(batches))
    assert len(batches) == pipeline.eval_num_batches(n, global_batch, shard)
    for batch in batches:
      assert batch['image'].shape == (local, 8, 8, 3) and batch['valid'].dtype == np.bool_
      for row in np.flatnonzero(batch['valid']):
        index = int(batch['index'][row])
        seen.append(index)
        assert batch['label'][row] == index % 8
        assert batch['image'][row, 4, 4, 0] == index % 256   # the pixels are that record's
  assert len(set(counts)) == 1, counts                       # same number of steps everywhere
  assert sorted(seen) == list(range(n))                      # each exactly once
  # Padding: under one local batch per process (plus the uneven split of n).
  assert 0 <= counts[0] * global_batch - n < global_batch + processes


def test_eval_padding_rows_are_invalid():
  ds = pipeline.eval_dataset(_list_source(5), pipeline.EvalTransform(8), global_batch=4)
  batches = list(pipeline.to_iter(ds))
  valid = np.concatenate([b['valid'] for b in batches])
  np.testing.assert_array_equal(valid, [True] * 5 + [False] * 3)


def test_eval_with_a_worker_process_matches_in_process():
  ds = pipeline.eval_dataset(_list_source(11), pipeline.EvalTransform(8), global_batch=4,
                             shard=pipeline.Sharding(1, 2))
  _assert_batches_equal(list(pipeline.to_iter(ds, num_workers=1)), list(pipeline.to_iter(ds)))


# ----------------------------------------------------------------------- fine-tuning, evaluation

def test_finetune_and_eval_transforms(emoset):
  record = emoset['train'][0]
  finetune = pipeline.FinetuneTransform(SIZE)
  out = finetune((4, record), np.random.default_rng(0))
  assert out['image'].shape == (SIZE, SIZE, 3) and out['image'].dtype == np.uint8
  assert out['label'].dtype == np.int32 and out['label'] == record['label']
  assert out['index'].dtype == np.int64 and out['index'] == 4
  again = finetune((4, record), np.random.default_rng(0))
  np.testing.assert_array_equal(again['image'], out['image'])
  others = [finetune((4, record), np.random.default_rng(s))['image'] for s in range(1, 4)]
  assert not all(np.array_equal(o, out['image']) for o in others)

  evaluate = pipeline.EvalTransform(SIZE)
  out = evaluate((2, record))
  assert out['image'].shape == (SIZE, SIZE, 3) and out['image'].dtype == np.uint8
  assert out['label'] == record['label'] and out['index'] == 2
  np.testing.assert_array_equal(evaluate((2, record))['image'], out['image'])
  # Resize to 32 / 0.875 ≈ 37 on the shorter side, centre crop 32: exactly the transform.
  expected = T.resize_center_crop(T.decode(record['image']), 37, SIZE)
  np.testing.assert_array_equal(out['image'], T.to_array(expected))


def test_finetune_and_eval_datasets(emoset):
  ds = pipeline.train_dataset(emoset['train'], pipeline.FinetuneTransform(SIZE),
                              global_batch=BATCH, seed=0)
  batch = next(pipeline.to_iter(ds))
  assert batch['image'].shape == (BATCH, SIZE, SIZE, 3) and batch['image'].dtype == np.uint8
  test = emoset['test']
  ds = pipeline.eval_dataset(test, pipeline.EvalTransform(SIZE), global_batch=BATCH)
  first, second = list(pipeline.to_iter(ds)), list(pipeline.to_iter(ds))
  _assert_batches_equal(first, second)
  assert sorted(np.concatenate([b['index'][b['valid']] for b in first]).tolist()) == list(
      range(len(test)))


# --------------------------------------------------------------------------- on 4 fake devices

_MULTIDEVICE_SCRIPT = textwrap.dedent('''
    import io, json
    import jax, jax.numpy as jnp
    import numpy as np
    from PIL import Image
    from uniemox_jax import sharding
    from uniemox_jax.data import pipeline

    assert jax.device_count() == 4, jax.devices()
    def record(i):
      buf = io.BytesIO()
      Image.fromarray(np.full((10, 12, 3), i, np.uint8)).save(buf, format='PNG')
      return dict(image=buf.getvalue(), label=i % 8)
    n = 13
    source = [record(i) for i in range(n)]
    mesh = sharding.make_mesh(2, 2)
    to_global = pipeline.make_global_fn(mesh, sharding.BATCH_AXES)
    ds = pipeline.eval_dataset(source, pipeline.EvalTransform(8), global_batch=8)

    @jax.jit
    def count(batch):   # how often each example is counted by this batch
      hits = jax.nn.one_hot(batch['index'], n, dtype=jnp.int32)
      return jnp.sum(hits * batch['valid'][:, None], axis=0)

    out = dict(rows_equal=True, shards=[], counts=[0] * n, batches=0)
    for local in pipeline.to_iter(ds):
      glob = to_global(local)
      out['batches'] += 1
      for key, value in glob.items():
        # int64 arrives as int32 unless jax_enable_x64: JAX's canonical dtype.
        same = (np.array_equal(np.asarray(value), local[key]) and value.shape == local[key].shape
                and value.dtype == jax.dtypes.canonicalize_dtype(local[key].dtype))
        if not same:
          out['rows_equal'] = key
      image = glob['image']
      out['shards'].append(sorted(
          (s.device.id, s.index[0].start, s.index[0].stop, s.data.shape[0])
          for s in image.addressable_shards))
      out['spec'] = str(image.sharding.spec)
      out['counts'] = (np.asarray(out['counts']) + np.asarray(count(glob))).tolist()
    print('RESULT ' + json.dumps(out))
''')


@pytest.mark.multidevice
def test_global_batches_and_evaluation_on_four_devices():
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO),
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  proc = subprocess.run([sys.executable, '-c', _MULTIDEVICE_SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1]
  out = json.loads(line[len('RESULT '):])
  assert out['rows_equal'] is True, out['rows_equal']
  assert out['batches'] == pipeline.eval_num_batches(13, 8) == 2
  assert "('data', 'fsdp')" in out['spec']                   # rows split over both axes
  for shards in out['shards']:
    assert len({s[0] for s in shards}) == 4                  # on every device,
    assert sorted((s[1], s[2]) for s in shards) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert all(s[3] == 2 for s in shards)                    # two rows each
  assert out['counts'] == [1] * 13                           # every example counted once

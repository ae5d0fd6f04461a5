"""Host-side augmentations: crop/flip/resize geometry, RandAugment, random erasing, decoding."""
import io
import math
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from uniemox_jax.data import transforms as T


def _natural_image(width=320, height=240, seed=0) -> Image.Image:
  """A smooth colour field with hard-edged shapes: texture at every scale, like a photo."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
  img = Image.fromarray(coarse).resize((width, height), T.BICUBIC)
  draw = ImageDraw.Draw(img)
  for _ in range(12):
    x0, y0 = rng.integers(0, width), rng.integers(0, height)
    x1, y1 = x0 + rng.integers(5, width // 3), y0 + rng.integers(5, height // 3)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
  fine = rng.normal(0, 6, size=(height, width, 3))
  return Image.fromarray(np.clip(np.asarray(img) + fine, 0, 255).astype(np.uint8))


def _encode(img: Image.Image, fmt='JPEG', **kw) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format=fmt, **kw)
  return buf.getvalue()


# --------------------------------------------------------------------------------------------
# RandomResizedCrop.

def _fallback_box(width, height, ratio):
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


@pytest.mark.parametrize('size', [(500, 375), (375, 500), (64, 64), (1000, 120)])
@pytest.mark.parametrize('scale', [(0.08, 1.0), (0.2, 1.0)])
def test_rrc_params_stay_in_scale_ratio_and_image(size, scale):
  width, height = size
  ratio = (3 / 4, 4 / 3)
  rng = np.random.default_rng(0)
  fallback = _fallback_box(width, height, ratio)
  fractions, n_fallback = [], 0
  for _ in range(2000):
    x0, y0, w, h = T.random_resized_crop_params(rng, width, height, scale, ratio)
    assert 0 <= x0 and 0 <= y0 and w >= 1 and h >= 1
    assert x0 + w <= width and y0 + h <= height
    if (x0, y0, w, h) == fallback:
      n_fallback += 1
      continue
    # Sides are rounded to whole pixels: allow half a pixel on each.
    frac_lo = (math.sqrt(scale[0] * width * height) - 1) ** 2 / (width * height)
    frac_hi = (math.sqrt(scale[1] * width * height) + 1) ** 2 / (width * height)
    fraction = w * h / (width * height)
    assert frac_lo <= fraction <= frac_hi
    assert ratio[0] * (1 - 1.5 / min(w, h)) <= w / h <= ratio[1] * (1 + 1.5 / min(w, h))
    fractions.append(fraction)
  if size == (500, 375):
    # Area fractions are drawn uniformly; below 0.56 every box fits a 4:3 image, so there the
    # accepted fractions stay uniform (rejected large draws are redrawn, adding mass evenly).
    fractions = np.asarray(fractions)
    assert fractions.min() < scale[0] + 0.02 and fractions.max() > 0.95
    mid = (scale[0] + 0.5) / 2
    low = np.sum((fractions >= scale[0]) & (fractions < mid))
    high = np.sum((fractions >= mid) & (fractions < 0.5))
    assert abs(low - high) < 0.15 * (low + high)
    assert n_fallback < 20


def test_rrc_falls_back_to_a_centre_crop_with_clamped_ratio():
  rng = np.random.default_rng(0)
  # No box of >= 50% area with ratio <= 4/3 fits in 1000x10: always the fallback.
  for _ in range(5):
    assert T.random_resized_crop_params(rng, 1000, 10, (0.5, 1.0)) == (493, 0, 13, 10)
    assert T.random_resized_crop_params(rng, 10, 1000, (0.5, 1.0)) == (0, 493, 10, 13)


def test_rrc_output_size_determinism_and_bicubic():
  img = _natural_image()
  out = T.random_resized_crop(img, np.random.default_rng(5), 64)
  assert out.size == (64, 64) and out.mode == 'RGB'
  again = T.random_resized_crop(img, np.random.default_rng(5), 64)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(again))
  others = [np.asarray(T.random_resized_crop(img, np.random.default_rng(s), 64)) for s in range(6)]
  assert len({o.tobytes() for o in others}) == 6
  # One bicubic resampling of the drawn box.
  x0, y0, w, h = T.random_resized_crop_params(np.random.default_rng(5), *img.size)
  box = (x0, y0, x0 + w, y0 + h)
  np.testing.assert_array_equal(np.asarray(out),
                                np.asarray(img.resize((64, 64), T.BICUBIC, box=box)))
  assert not np.array_equal(np.asarray(out),
                            np.asarray(img.resize((64, 64), T.BILINEAR, box=box)))
  # Same pixels as torchvision's crop-then-resize away from the border.
  ref = np.asarray(img.crop(box).resize((64, 64), T.BICUBIC), np.int16)
  assert np.abs(np.asarray(out, np.int16)[4:-4, 4:-4] - ref[4:-4, 4:-4]).max() <= 1


def test_rrc_region_crops_only_inside_the_region():
  width, height = 400, 300
  region = (110, 40, 290, 260)
  base = np.zeros((height, width, 3), np.uint8)
  base[..., 1] = 255  # outside: full green
  rng = np.random.default_rng(1)
  inner = rng.integers(0, 256, size=(region[3] - region[1], region[2] - region[0]))
  base[region[1]:region[3], region[0]:region[2], 0] = inner  # inside: red texture, no green
  base[region[1]:region[3], region[0]:region[2], 1] = 0
  img = Image.fromarray(base)
  for seed in range(100):
    out = np.asarray(T.random_resized_crop(img, np.random.default_rng(seed), 32, region=region))
    assert out.shape == (32, 32, 3)
    assert out[..., 1].max() == 0, f'seed {seed}: pixels from outside the region'
  # The params are computed on the region and offset into it: scale (1, 1) and ratio 1 on a
  # square region is the whole region.
  square = (100, 50, 300, 250)
  out = T.random_resized_crop(img, np.random.default_rng(0), 48, scale=(1, 1), ratio=(1, 1),
                              region=square)
  np.testing.assert_array_equal(np.asarray(out),
                                np.asarray(img.crop(square).resize((48, 48), T.BICUBIC)))
  # Fractional boxes grow to whole pixels; empty ones are an error.
  T.random_resized_crop(img, np.random.default_rng(0), 16, region=(110.4, 40.6, 289.5, 259.2))
  with pytest.raises(ValueError, match='region'):
    T.random_resized_crop(img, np.random.default_rng(0), 16, region=(500, 10, 600, 20))


def test_rrc_region_matches_an_image_of_the_region():
  img = _natural_image(300, 200, seed=3)
  region = (30, 20, 230, 170)
  a = T.random_resized_crop(img, np.random.default_rng(7), 40, region=region)
  b = T.random_resized_crop(img.crop(region), np.random.default_rng(7), 40)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------------------------
# Flip and evaluation resize.

def test_hflip_flips_exactly_with_probability_p():
  img = _natural_image(50, 30)
  arr = np.asarray(img)
  np.testing.assert_array_equal(np.asarray(T.random_hflip(img, np.random.default_rng(0), 1.0)),
                                arr[:, ::-1])
  assert T.random_hflip(img, np.random.default_rng(0), 0.0) is img
  rng = np.random.default_rng(0)
  flips = sum(T.random_hflip(img, rng) is not img for _ in range(2000))
  assert 900 < flips < 1100


@pytest.mark.parametrize('size', [(500, 375), (375, 500), (256, 256), (641, 300)])
def test_resize_center_crop_matches_resize_then_centre_crop(size):
  width, height = size
  img = _natural_image(width, height, seed=2)
  out = T.resize_center_crop(img, 256, 224)
  assert out.size == (224, 224)
  # torchvision's Resize(256) + CenterCrop(224), done the long way.
  if width <= height:
    new = (256, int(256 * height / width))
  else:
    new = (int(256 * width / height), 256)
  full = img.resize(new, T.BICUBIC)
  left, top = int(round((new[0] - 224) / 2)), int(round((new[1] - 224) / 2))
  ref = np.asarray(full.crop((left, top, left + 224, top + 224)), np.int16)
  assert np.abs(np.asarray(out, np.int16) - ref).max() <= 1


def test_resize_center_crop_keeps_the_centre():
  for width, height in [(600, 300), (300, 600)]:
    arr = np.zeros((height, width, 3), np.uint8)
    cy, cx = height // 2, width // 2
    arr[cy - 10:cy + 10, cx - 10:cx + 10] = 255
    out = np.asarray(T.resize_center_crop(Image.fromarray(arr), 256, 224))[..., 0]
    ys, xs = np.nonzero(out > 128)
    assert abs(ys.mean() - 111.5) < 1 and abs(xs.mean() - 111.5) < 1
  with pytest.raises(ValueError, match='crop_size'):
    T.resize_center_crop(Image.fromarray(arr), 200, 224)


# --------------------------------------------------------------------------------------------
# RandAugment.

def test_rand_augment_spec_parsing():
  ra = T.RandAugment('rand-m9-mstd0.5-inc1')
  assert (ra.magnitude, ra.num_layers, ra.magnitude_std, ra.magnitude_max, ra.increasing,
          ra.prob) == (9, 2, 0.5, 10, True, 0.5)
  assert ra.ops == T.RAND_INCREASING_TRANSFORMS and len(ra.ops) == 15
  assert ra.fill == (124, 116, 104) and ra.interpolation == 'bicubic'
  ra = T.RandAugment('rand-n3-m7-inc0-mmax12-p0.7-mstd101')
  assert (ra.magnitude, ra.num_layers, ra.magnitude_std, ra.magnitude_max, ra.increasing,
          ra.prob) == (7, 3, math.inf, 12, False, 0.7)
  assert ra.ops == T.RAND_TRANSFORMS
  assert T.parse_rand_augment_spec('rand')['magnitude'] == 10
  for bad in ['augmix-m3', 'rand-q4', 'rand-m']:
    with pytest.raises(ValueError):
      T.RandAugment(bad)
  with pytest.raises(ValueError, match='interpolation'):
    T.RandAugment(interpolation='nearest')


def test_rand_augment_magnitude_sampling():
  rng = np.random.default_rng(0)
  ra = T.RandAugment('rand-m9-mstd0.5')
  draws = np.array([ra.sample_magnitude(rng) for _ in range(4000)])
  assert draws.max() <= 10 and draws.min() >= 0
  assert draws.mean() == pytest.approx(9, abs=0.05) and draws.std() == pytest.approx(0.5, abs=0.05)
  ra = T.RandAugment('rand-m10-mstd0.5')
  assert max(ra.sample_magnitude(rng) for _ in range(500)) == 10
  ra = T.RandAugment('rand-m8-mstd200')
  draws = np.array([ra.sample_magnitude(rng) for _ in range(4000)])
  assert draws.min() >= 0 and draws.max() <= 8 and draws.mean() == pytest.approx(4, abs=0.2)
  assert T.RandAugment('rand-m9').sample_magnitude(rng) == 9


ALL_OPS = sorted(set(T.RAND_TRANSFORMS) | set(T.RAND_INCREASING_TRANSFORMS))


@pytest.mark.parametrize('interpolation', ['bicubic', 'random'])
def test_every_op_keeps_size_and_mode_and_is_deterministic(interpolation):
  img = _natural_image(64, 48)
  ra = T.RandAugment(interpolation=interpolation)
  for name in ALL_OPS:
    a = ra.apply_op(img, name, 9, np.random.default_rng(3))
    b = ra.apply_op(img, name, 9, np.random.default_rng(3))
    assert a.size == img.size and a.mode == 'RGB', name
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_ops_at_their_identity_magnitude_are_near_identity():
  img = _natural_image(64, 48)
  arr = np.asarray(img, np.int16)
  ra = T.RandAugment()
  identity_at_zero = ['ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
                      'SharpnessIncreasing', 'SolarizeIncreasing', 'SolarizeAdd', 'Rotate',
                      'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel']
  for name in identity_at_zero:
    for seed in range(4):
      out = np.asarray(ra.apply_op(img, name, 0, np.random.default_rng(seed)), np.int16)
      assert np.abs(out - arr).max() <= 1, name
  # Non-increasing enhance ops are identity at factor 1.0, i.e. magnitude 5.
  for name in ['Color', 'Contrast', 'Brightness', 'Sharpness']:
    out = np.asarray(ra.apply_op(img, name, 5, np.random.default_rng(0)), np.int16)
    assert np.abs(out - arr).max() <= 1, name


def test_op_ranges_follow_timm():
  img = _natural_image(60, 60)
  arr = np.asarray(img, np.int16)
  ra = T.RandAugment()
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(np.asarray(ra.apply_op(img, 'Invert', 0, rng)), 255 - arr)
  # Increasing posterize keeps 4 - int(m/10 * 4) bits: m=10 keeps none, m=5 keeps 2.
  assert np.asarray(ra.apply_op(img, 'PosterizeIncreasing', 10, rng)).max() == 0
  np.testing.assert_array_equal(np.asarray(ra.apply_op(img, 'PosterizeIncreasing', 5, rng)),
                                arr & 0b11000000)
  # Increasing solarize inverts pixels >= 256 - int(m/10 * 256): all of them at m=10.
  np.testing.assert_array_equal(np.asarray(ra.apply_op(img, 'SolarizeIncreasing', 10, rng)),
                                255 - arr)
  threshold = 256 - int(9 / 10 * 256)
  np.testing.assert_array_equal(np.asarray(ra.apply_op(img, 'SolarizeIncreasing', 9, rng)),
                                np.where(arr >= threshold, 255 - arr, arr))
  # Solarize-add adds int(m/10 * 110) to pixels below 128.
  np.testing.assert_array_equal(np.asarray(ra.apply_op(img, 'SolarizeAdd', 10, rng)),
                                np.where(arr < 128, np.minimum(arr + 110, 255), arr))
  # Increasing brightness: factor 1 ± 0.9 m/10, floored at 0.1.
  dark = Image.fromarray((arr // 3).astype(np.uint8))  # no saturation at factor 1.9
  factors = set()
  for seed in range(20):
    out = np.asarray(ra.apply_op(dark, 'BrightnessIncreasing', 10, np.random.default_rng(seed)))
    factors.add(round(float(out.mean() / (arr // 3).mean()), 1))
  assert factors == {0.1, 1.9}
  # Rotation fills the corners with the fill colour.
  rotated = np.asarray(ra.apply_op(img, 'Rotate', 10, rng))
  np.testing.assert_array_equal(rotated[0, 0], (124, 116, 104))
  # Relative translation by 0.45 * width at m=10 (rounded): that many columns are fill.
  shifted = np.asarray(ra.apply_op(img, 'TranslateXRel', 10, rng))
  fill_cols = np.all(shifted == (124, 116, 104), axis=(0, 2)).sum()
  assert fill_cols in (26, 27, 28)
  shifted = np.asarray(ra.apply_op(img, 'TranslateYRel', 5, rng))
  fill_rows = np.all(shifted == (124, 116, 104), axis=(1, 2)).sum()
  assert fill_rows in (13, 14, 15)
  with pytest.raises(KeyError):
    ra.apply_op(img, 'Cutout', 5, rng)


def test_rand_augment_call_is_deterministic_and_varies_with_the_rng():
  img = _natural_image(64, 48)
  ra = T.RandAugment('rand-m9-mstd0.5-inc1')
  a = ra(img, np.random.default_rng(11))
  b = ra(img, np.random.default_rng(11))
  assert a.size == img.size and a.mode == 'RGB'
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  outs = {np.asarray(ra(img, np.random.default_rng(s))).tobytes() for s in range(30)}
  assert len(outs) >= 20  # a quarter of draws apply no op at all (p = 0.5, n = 2)
  # p0 never applies an op.
  assert np.array_equal(np.asarray(T.RandAugment('rand-m9-p0')(img, np.random.default_rng(0))),
                        np.asarray(img))


# --------------------------------------------------------------------------------------------
# Random erasing.

def _erased_box(before, after):
  changed = np.any(before != after, axis=-1)
  ys, xs = np.nonzero(changed)
  box = (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
  return changed, box


def test_random_erasing_probability_zero_and_one():
  arr = np.asarray(_natural_image(64, 64))
  assert T.random_erasing(arr, np.random.default_rng(0), prob=0.0) is arr
  # A colour the fill almost never produces in all three channels at once.
  base = np.zeros((96, 128, 3), np.uint8)
  base[...] = (255, 0, 255)
  for seed in range(50):
    before = base.copy()
    out = T.random_erasing(base, np.random.default_rng(seed), prob=1.0)
    np.testing.assert_array_equal(base, before)  # never in place
    changed, (y0, y1, x0, x1) = _erased_box(base, out)
    # Exactly one rectangle.
    assert changed[y0:y1, x0:x1].mean() > 0.99 and changed.sum() == changed[y0:y1, x0:x1].sum()
    fraction = (y1 - y0) * (x1 - x0) / (96 * 128)
    assert 0.02 * 0.8 <= fraction <= 1 / 3 * 1.2, (seed, fraction)
    assert y1 - y0 < 96 and x1 - x0 < 128
  rng = np.random.default_rng(0)
  erased = sum(T.random_erasing(arr, rng, prob=0.25) is not arr for _ in range(2000))
  assert 430 < erased < 570


def test_random_erasing_fill_statistics_match_normalised_standard_normal():
  base = np.zeros((224, 224, 3), np.uint8)
  base[...] = (255, 0, 255)
  values = []
  for seed in range(40):
    out = T.random_erasing(base, np.random.default_rng(seed), prob=1.0)
    changed = np.any(out != base, axis=-1)
    values.append(out[changed].astype(np.float64))
  values = np.concatenate(values)
  mean255 = 255 * np.array(T.IMAGENET_MEAN)
  std255 = 255 * np.array(T.IMAGENET_STD)
  np.testing.assert_allclose(values.mean(0), mean255, atol=2.0)
  np.testing.assert_allclose(values.std(0), std255, rtol=0.05)
  z = (values - mean255) / std255  # what the device's normalisation gives: ≈ N(0, 1), clipped
  unclipped = (values > 0) & (values < 255)
  assert abs(z[unclipped].mean()) < 0.05 and unclipped.mean() > 0.95


def test_random_erasing_is_deterministic_and_checks_its_input():
  arr = np.asarray(_natural_image(64, 64))
  a = T.random_erasing(arr, np.random.default_rng(4), prob=1.0)
  b = T.random_erasing(arr, np.random.default_rng(4), prob=1.0)
  np.testing.assert_array_equal(a, b)
  c = T.random_erasing(arr, np.random.default_rng(4), prob=1.0, count=3)
  assert c.shape == arr.shape and c.dtype == np.uint8
  with pytest.raises(ValueError, match='uint8'):
    T.random_erasing(arr.astype(np.float32), np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# Decoding.

def test_decode_converts_every_mode_to_rgb():
  rgb = _natural_image(40, 30)
  grey = rgb.convert('L')
  out = T.decode(_encode(grey, 'PNG'))
  assert out.mode == 'RGB' and out.size == (40, 30)
  a = T.to_array(out)
  np.testing.assert_array_equal(a[..., 0], np.asarray(grey))
  np.testing.assert_array_equal(a[..., 1], a[..., 2])
  rgba = rgb.copy()
  rgba.putalpha(100)
  np.testing.assert_array_equal(T.to_array(T.decode(_encode(rgba, 'PNG'))), np.asarray(rgb))
  palette = rgb.convert('P')
  palette.info['transparency'] = 0
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    out = T.decode(_encode(palette, 'PNG', transparency=0))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(palette.convert('RGB')))
  assert T.decode(_encode(rgb.convert('CMYK'), 'JPEG')).mode == 'RGB'
  jpeg = _encode(rgb, 'JPEG', quality=90)
  np.testing.assert_array_equal(T.to_array(T.decode(jpeg)),
                                np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB')))
  arr = T.to_array(T.decode(jpeg))
  assert arr.dtype == np.uint8 and arr.shape == (30, 40, 3)


def test_decode_min_size_reduces_jpeg_only_while_both_sides_stay_large_enough():
  img = _natural_image(512, 384)
  jpeg = _encode(img, 'JPEG', quality=90)
  assert T.decode(jpeg).size == (512, 384)
  out = T.decode(jpeg, min_size=100)  # 1/2 keeps both sides >= 100, 1/4 would not
  assert out.size == (256, 192) and out.info['original_size'] == (512, 384)
  assert T.decode(jpeg, min_size=90).size == (128, 96)
  assert T.decode(jpeg, min_size=200).size == (512, 384)  # 1/2 would make 192 < 200
  assert T.decode(_encode(img, 'PNG'), min_size=50).size == (512, 384)
  with pytest.raises(ValueError):
    T.decode(jpeg, min_size=0)


def test_decode_min_size_changes_downstream_results_by_a_resampling_difference_only():
  img = _natural_image(1024, 768, seed=4)
  jpeg = _encode(img, 'JPEG', quality=90)
  full = T.decode(jpeg)
  draft = T.decode(jpeg, min_size=256)
  assert draft.size == (512, 384)
  a = np.asarray(T.resize_center_crop(full, 256, 224), np.float64)
  b = np.asarray(T.resize_center_crop(draft, 256, 224), np.float64)
  assert np.abs(a - b).mean() < 2.0
  # A crop that is still a downscale from the reduced image: the same box, in each one's pixels.
  for seed in range(5):
    x0, y0, w, h = T.random_resized_crop_params(np.random.default_rng(seed), 1024, 768, (0.5, 1))
    a = np.asarray(full.resize((224, 224), T.BICUBIC, box=(x0, y0, x0 + w, y0 + h)), np.float64)
    half = (x0 / 2, y0 / 2, (x0 + w) / 2, (y0 + h) / 2)
    b = np.asarray(draft.resize((224, 224), T.BICUBIC, box=half), np.float64)
    assert np.abs(a - b).mean() < 3.0

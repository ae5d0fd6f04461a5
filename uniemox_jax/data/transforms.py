"""Host-side image augmentations: pure functions of (image, `np.random.Generator`) → image.

These run in Grain worker processes, so they use numpy and PIL only (no JAX, no device ops) and
take every random draw from the generator they are given (no global RNG): the same seed gives
the same output. Images travel as `PIL.Image` in mode RGB until :func:`to_array` turns them into
`uint8 [H, W, 3]`; normalisation by the ImageNet mean/std happens on the device.

The recipes (docs/method.md §4) and what builds them:

  pre-training  decode → random_resized_crop(224, scale=(0.2, 1)) → random_hflip → to_array
  fine-tuning   decode → random_resized_crop(224, scale=(0.08, 1)) → random_hflip
                → RandAugment('rand-m9-mstd0.5-inc1') → to_array → random_erasing(0.25)
                (then Mixup/CutMix on the device: :mod:`uniemox_jax.data.mixup`)
  evaluation    decode → resize_center_crop(256, 224) → to_array

Semantics follow torchvision's `RandomResizedCrop`/`Resize`/`CenterCrop` and timm's
`rand_augment_transform`/`RandomErasing` as used by the released UniEmoX fine-tuning code
(timm 0.5.4 `create_transform(..., interpolation='bicubic')`); where we differ it is said at the
function.
"""
from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ImageNet mean in 0–255, rounded: the fill timm gives RandAugment's geometric ops.
IMAGENET_FILL = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)  # (124, 116, 104)

BICUBIC = Image.Resampling.BICUBIC
BILINEAR = Image.Resampling.BILINEAR

Box = tuple[int, int, int, int]


# ---------------------------------------------------------------------------------------------
# Decoding and conversion.

def decode(image_bytes: bytes, *, min_size: int | None = None) -> Image.Image:
  """Decodes encoded image bytes (JPEG, PNG, ...) into an RGB `PIL.Image`.

  Greyscale, palette, CMYK and RGBA inputs are converted to RGB; alpha is dropped (not composited
  on a background), as `Image.open(path).convert('RGB')` in torchvision's folder loader does. EXIF
  orientation is not applied, also like that loader.

  Args:
    image_bytes: the encoded file.
    min_size: `None` (default) decodes at full size. Otherwise JPEGs may be decoded at 1/2, 1/4
      or 1/8 size in the DCT domain (`Image.draft`), which is 2–4x faster, choosing the largest
      reduction that keeps *both* sides `>= min_size`; other formats decode at full size.

  The trade-off of `min_size`: the DCT reduction is itself a (box-like) downscale, so a later
  bicubic resize from the reduced image differs from one from the full image by a small
  resampling difference (a few grey levels on natural images, measured in the tests), never more,
  *as long as every later resize is still a downscale*. Choose `min_size` accordingly:
    - evaluation (`resize_center_crop(256, 224)`): `min_size=256`.
    - RandomResizedCrop to `size` with smallest area fraction `s`: the smallest crop has shorter
      side about `shorter * sqrt(s)`, so `min_size = ceil(size / sqrt(s))` (792 for 224 and 0.08,
      501 for 0.2) keeps every crop at or above `size` pixels. A smaller `min_size` makes small
      crops *upsample* a reduced image: visibly blurrier than upsampling the full one.
  For 500×375 images (EmoSet's typical size) `min_size >= 188` never reduces anything.

  With `min_size`, the returned image may be smaller than the stored one; its stored size is
  kept in `img.info['original_size']`. Boxes measured on the stored image (person boxes) must be
  scaled by `img.size / original_size` before being used as a `region`.
  """
  img = Image.open(io.BytesIO(image_bytes))
  original_size = img.size
  if min_size is not None:
    if min_size < 1:
      raise ValueError(f'decode: min_size must be >= 1 or None, got {min_size}.')
    # A no-op for formats other than JPEG; PIL picks the largest 1/2^k with both sides >= min_size.
    img.draft('RGB', (min_size, min_size))
  img = _to_rgb(img)
  img.info['original_size'] = original_size
  return img


def _to_rgb(img: Image.Image) -> Image.Image:
  if img.mode == 'RGB':
    img.load()
    return img
  if img.mode == 'P' and 'transparency' in img.info:
    # Converting straight to RGB warns about palette transparency; via RGBA gives the same
    # colours without the warning.
    img = img.convert('RGBA')
  return img.convert('RGB')


def to_array(img: Image.Image) -> np.ndarray:
  """`PIL.Image` → `uint8 [H, W, 3]` (RGB)."""
  if img.mode != 'RGB':
    img = _to_rgb(img)
  arr = np.asarray(img, dtype=np.uint8)
  if arr.ndim != 3 or arr.shape[2] != 3:
    raise ValueError(f'to_array: expected an RGB image, got array of shape {arr.shape}.')
  return arr


# ---------------------------------------------------------------------------------------------
# Crops, flips, resizes.

def random_resized_crop_params(
    rng: np.random.Generator, width: int, height: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
  """torchvision's `RandomResizedCrop.get_params`: returns `(x0, y0, w, h)` in pixels.

  Up to 10 attempts draw an area fraction uniformly from `scale` and an aspect ratio (w/h)
  log-uniformly from `ratio`; the first box that fits (after rounding its sides) is placed
  uniformly. If none fits, the fallback is a centred crop of the whole image with its aspect
  clamped into `ratio`.
  """
  if width < 1 or height < 1:
    raise ValueError(f'random_resized_crop_params: empty image ({width}x{height}).')
  if scale[0] > scale[1] or ratio[0] > ratio[1]:
    raise ValueError(f'random_resized_crop_params: scale {scale} and ratio {ratio} must be '
                     '(min, max) pairs.')
  area = width * height
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      y0 = int(rng.integers(0, height - h + 1))
      x0 = int(rng.integers(0, width - w + 1))
      return x0, y0, w, h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def _region_box(region: Sequence[float], size: tuple[int, int]) -> Box:
  """A pixel box `(x0, y0, x1, y1)` (x1/y1 exclusive) → integer box clipped to the image.

  Fractional coordinates grow outwards (floor the start, ceil the end) so no part of the region
  is lost.
  """
  width, height = size
  x0, y0, x1, y1 = (float(v) for v in region)
  x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
  x1, y1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
  if x1 <= x0 or y1 <= y0:
    raise ValueError(f'random_resized_crop: region {tuple(region)} is empty inside the '
                     f'{width}x{height} image; pass region=None to crop the whole image.')
  return x0, y0, x1, y1


def random_resized_crop(
    img: Image.Image, rng: np.random.Generator, size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    region: Sequence[float] | None = None,
) -> Image.Image:
  """RandomResizedCrop to `size`×`size`, bicubic.

  Args:
    region: optional `(x0, y0, x1, y1)` in pixels of `img` (x1/y1 exclusive, PIL's crop
      convention): the crop is drawn inside this sub-box only (the person view). The crop
      parameters are computed on the region's width/height and offset into it, so a region
      behaves exactly like an image of that size.

  Crop and resize are one resampling (`resize(..., box=...)`). Unlike torchvision's crop-then-
  resize, the bicubic kernel at the crop's border reads the real neighbouring pixels (up to 2
  source pixels beyond the box when upsampling) instead of treating the border as an image edge;
  only border pixels differ, by a few grey levels. It never reads outside `region`: the region is
  cut out first.
  """
  if region is not None:
    box = _region_box(region, img.size)
    if box != (0, 0, img.width, img.height):
      img = img.crop(box)
  x0, y0, w, h = random_resized_crop_params(rng, img.width, img.height, scale, ratio)
  return img.resize((size, size), BICUBIC, box=(x0, y0, x0 + w, y0 + h))


def random_hflip(img: Image.Image, rng: np.random.Generator, p: float = 0.5) -> Image.Image:
  """Mirrors left↔right with probability `p`."""
  if rng.random() < p:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return img


def resize_center_crop(img: Image.Image, resize_size: int = 256,
                       crop_size: int = 224) -> Image.Image:
  """Evaluation: shorter side to `resize_size` (bicubic), then the centred `crop_size` square.

  Same pixels as torchvision's `Resize(resize_size, BICUBIC)` + `CenterCrop(crop_size)` (the
  longer side becomes `int(resize_size * long / short)`; the crop offset is
  `round((side - crop) / 2)`), computed as one resize of just the kept box.
  """
  if crop_size > resize_size:
    raise ValueError(f'resize_center_crop: crop_size {crop_size} > resize_size {resize_size}; '
                     'the crop would need padding.')
  width, height = img.size
  if width <= height:
    new_w, new_h = resize_size, int(resize_size * height / width)
  else:
    new_w, new_h = int(resize_size * width / height), resize_size
  left = int(round((new_w - crop_size) / 2.0))
  top = int(round((new_h - crop_size) / 2.0))
  sx, sy = width / new_w, height / new_h
  # Output pixel i of the full resize samples source position (i + 0.5) * s; resizing only the box
  # [left * s, (left + crop) * s) to `crop` pixels keeps the same scale and the same positions.
  box = (left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy)
  return img.resize((crop_size, crop_size), BICUBIC, box=box)


# ---------------------------------------------------------------------------------------------
# RandAugment (timm's `rand-m9-mstd0.5-inc1`).

# Magnitudes are on a 0–10 scale: an op's argument is `magnitude / _LEVEL_DENOM` of its range.
# `mmax` only raises the clipping bound, not this denominator (as in timm).
_LEVEL_DENOM = 10.0


def _signed(value: float, rng: np.random.Generator) -> float:
  return -value if rng.random() > 0.5 else value


class _Context:
  """What geometric ops need besides the image: fill colour and resampling choice."""

  def __init__(self, fill: tuple[int, int, int], interpolation: str):
    self.fill = fill
    self.interpolation = interpolation

  def resample(self, rng: np.random.Generator) -> Image.Resampling:
    if self.interpolation == 'random':
      return (BILINEAR, BICUBIC)[int(rng.integers(2))]
    return BICUBIC if self.interpolation == 'bicubic' else BILINEAR


OpFn = Callable[[Image.Image, float, np.random.Generator, _Context], Image.Image]


def _affine(img, matrix, rng, ctx):
  return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=ctx.resample(rng),
                       fillcolor=ctx.fill)


def _op_auto_contrast(img, level, rng, ctx):
  del level, rng, ctx
  return ImageOps.autocontrast(img)


def _op_equalize(img, level, rng, ctx):
  del level, rng, ctx
  return ImageOps.equalize(img)


def _op_invert(img, level, rng, ctx):
  del level, rng, ctx
  return ImageOps.invert(img)


def _op_rotate(img, level, rng, ctx):
  degrees = _signed(level / _LEVEL_DENOM * 30.0, rng)  # [-30°, 30°]
  return img.rotate(degrees, resample=ctx.resample(rng), fillcolor=ctx.fill)


def _posterize(img, bits):
  """Keeps the top `bits` bits of each channel. 0 bits (increasing posterize at magnitude 10)
  gives black, as older Pillow did; Pillow >= 12 rejects bits < 1, so that case is done here.
  """
  bits = min(max(int(bits), 0), 8)
  if bits >= 8:
    return img
  if bits == 0:
    return img.point([0] * 256 * len(img.getbands()))
  return ImageOps.posterize(img, bits)


def _op_posterize(img, level, rng, ctx):
  del rng, ctx
  return _posterize(img, int(level / _LEVEL_DENOM * 4))  # keep 0..4 bits, weaker with level


def _op_posterize_increasing(img, level, rng, ctx):
  del rng, ctx
  return _posterize(img, 4 - int(level / _LEVEL_DENOM * 4))  # keep 4..0 bits


def _solarize(img, threshold):
  return ImageOps.solarize(img, min(max(int(threshold), 0), 256))


def _op_solarize(img, level, rng, ctx):
  del rng, ctx
  return _solarize(img, int(level / _LEVEL_DENOM * 256))  # invert pixels >= threshold


def _op_solarize_increasing(img, level, rng, ctx):
  del rng, ctx
  return _solarize(img, 256 - int(level / _LEVEL_DENOM * 256))


def _op_solarize_add(img, level, rng, ctx):
  del rng, ctx
  add = int(level / _LEVEL_DENOM * 110)  # [0, 110], added to pixels below 128
  lut = [min(255, i + add) if i < 128 else i for i in range(256)]
  return img.point(lut * len(img.getbands()))


def _enhance_factor(level):
  return level / _LEVEL_DENOM * 1.8 + 0.1  # [0.1, 1.9]; 1.0 is identity, at level 5


def _enhance_factor_increasing(level, rng):
  # 1.0 is identity; stronger levels move away from it in a random direction, kept >= 0.1.
  return max(0.1, 1.0 + _signed(level / _LEVEL_DENOM * 0.9, rng))


def _make_enhance(enhancer, increasing: bool) -> OpFn:
  def op(img, level, rng, ctx):
    del ctx
    factor = _enhance_factor_increasing(level, rng) if increasing else _enhance_factor(level)
    return enhancer(img).enhance(factor)
  return op


def _op_shear_x(img, level, rng, ctx):
  factor = _signed(level / _LEVEL_DENOM * 0.3, rng)  # [-0.3, 0.3]
  return _affine(img, (1, factor, 0, 0, 1, 0), rng, ctx)


def _op_shear_y(img, level, rng, ctx):
  factor = _signed(level / _LEVEL_DENOM * 0.3, rng)
  return _affine(img, (1, 0, 0, factor, 1, 0), rng, ctx)


def _op_translate_x_rel(img, level, rng, ctx):
  pixels = _signed(level / _LEVEL_DENOM * 0.45, rng) * img.size[0]  # up to 45% of the width
  return _affine(img, (1, 0, pixels, 0, 1, 0), rng, ctx)


def _op_translate_y_rel(img, level, rng, ctx):
  pixels = _signed(level / _LEVEL_DENOM * 0.45, rng) * img.size[1]
  return _affine(img, (1, 0, 0, 0, 1, pixels), rng, ctx)


_OPS: dict[str, OpFn] = {
    'AutoContrast': _op_auto_contrast,
    'Equalize': _op_equalize,
    'Invert': _op_invert,
    'Rotate': _op_rotate,
    'Posterize': _op_posterize,
    'PosterizeIncreasing': _op_posterize_increasing,
    'Solarize': _op_solarize,
    'SolarizeIncreasing': _op_solarize_increasing,
    'SolarizeAdd': _op_solarize_add,
    'Color': _make_enhance(ImageEnhance.Color, increasing=False),
    'ColorIncreasing': _make_enhance(ImageEnhance.Color, increasing=True),
    'Contrast': _make_enhance(ImageEnhance.Contrast, increasing=False),
    'ContrastIncreasing': _make_enhance(ImageEnhance.Contrast, increasing=True),
    'Brightness': _make_enhance(ImageEnhance.Brightness, increasing=False),
    'BrightnessIncreasing': _make_enhance(ImageEnhance.Brightness, increasing=True),
    'Sharpness': _make_enhance(ImageEnhance.Sharpness, increasing=False),
    'SharpnessIncreasing': _make_enhance(ImageEnhance.Sharpness, increasing=True),
    'ShearX': _op_shear_x,
    'ShearY': _op_shear_y,
    'TranslateXRel': _op_translate_x_rel,
    'TranslateYRel': _op_translate_y_rel,
}

# timm's `_RAND_TRANSFORMS` (inc0) and `_RAND_INCREASING_TRANSFORMS` (inc1), in timm's order.
RAND_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
    'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel',
    'TranslateYRel')
RAND_INCREASING_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing',
    'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
    'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


def parse_rand_augment_spec(spec: str) -> dict:
  """Parses a timm RandAugment string such as `'rand-m9-mstd0.5-inc1'`.

  Sections after `rand`, in any order: `m` magnitude (default 10), `n` ops per image (2),
  `mstd` magnitude std (0; > 100 means uniform in [0, m]), `mmax` magnitude clip (10),
  `inc` 0/1 increasing op set (0), `p` probability of applying each chosen op (0.5).
  Returns a dict with keys magnitude, num_layers, magnitude_std, magnitude_max, increasing, prob.

  (timm reads `inc0` as true because it tests `bool('0')`; we read the number.)
  """
  parts = spec.split('-')
  if parts[0] != 'rand':
    raise ValueError(f"RandAugment spec {spec!r} must start with 'rand-' "
                     "(e.g. 'rand-m9-mstd0.5-inc1').")
  out = dict(magnitude=10.0, num_layers=2, magnitude_std=0.0, magnitude_max=_LEVEL_DENOM,
             increasing=False, prob=0.5)
  for part in parts[1:]:
    match = re.fullmatch(r'([a-z]+)(\d.*)', part)
    if match is None:
      raise ValueError(f'RandAugment spec {spec!r}: cannot read section {part!r}; expected a '
                       'key followed by a number, e.g. m9, n2, mstd0.5, mmax10, inc1, p0.5.')
    key, val = match.groups()
    try:
      number = float(val)
    except ValueError:
      raise ValueError(
          f'RandAugment spec {spec!r}: section {part!r} has no valid number.') from None
    if key == 'm':
      out['magnitude'] = number
    elif key == 'n':
      out['num_layers'] = int(number)
    elif key == 'mstd':
      out['magnitude_std'] = math.inf if number > 100 else number
    elif key == 'mmax':
      out['magnitude_max'] = number
    elif key == 'inc':
      out['increasing'] = bool(int(number))
    elif key == 'p':
      out['prob'] = number
    else:
      raise ValueError(f'RandAugment spec {spec!r}: unknown section {key!r}; supported: '
                       'm, n, mstd, mmax, inc, p.')
  return out


class RandAugment:
  """timm's RandAugment (`rand_augment_transform`) on PIL images, with an explicit generator.

  Per image: `n` ops drawn uniformly *with* replacement from the op set; each is applied with
  probability `p`; each application draws its magnitude from N(m, mstd) (uniform [0, m] when
  mstd is inf), clipped to [0, mmax]; signed ops flip their sign with probability 1/2.
  Geometric ops fill uncovered pixels with `fill` (timm: the ImageNet mean in 0–255).

  `interpolation` is the resampling of the geometric ops: `'bicubic'` (default) is what the
  released fine-tuning recipe gets, because timm's `create_transform(..., interpolation=
  'bicubic')` passes that to RandAugment; `'random'` picks bilinear or bicubic per op (timm's
  behaviour when the pipeline's interpolation is 'random'); `'bilinear'` also works.

  `image_size` is kept for the absolute-translate ops of other timm policies; the relative ones
  used here translate by a fraction of the image itself.
  """

  def __init__(self, spec: str = 'rand-m9-mstd0.5-inc1', image_size: int = 224,
               fill: tuple[int, int, int] = IMAGENET_FILL, interpolation: str = 'bicubic'):
    if interpolation not in ('bicubic', 'bilinear', 'random'):
      raise ValueError(f"RandAugment: interpolation {interpolation!r} must be 'bicubic', "
                       "'bilinear' or 'random'.")
    params = parse_rand_augment_spec(spec)
    self.spec = spec
    self.magnitude = params['magnitude']
    self.num_layers = params['num_layers']
    self.magnitude_std = params['magnitude_std']
    self.magnitude_max = params['magnitude_max']
    self.increasing = params['increasing']
    self.prob = params['prob']
    self.image_size = image_size
    self.fill = tuple(int(c) for c in fill)
    self.interpolation = interpolation
    self.ops: tuple[str, ...] = (RAND_INCREASING_TRANSFORMS if self.increasing
                                 else RAND_TRANSFORMS)
    self._ctx = _Context(self.fill, interpolation)

  def __repr__(self) -> str:
    return (f'RandAugment(spec={self.spec!r}, m={self.magnitude}, n={self.num_layers}, '
            f'mstd={self.magnitude_std}, mmax={self.magnitude_max}, p={self.prob}, '
            f'interpolation={self.interpolation!r}, ops={list(self.ops)})')

  def sample_magnitude(self, rng: np.random.Generator) -> float:
    magnitude = self.magnitude
    if self.magnitude_std == math.inf:
      magnitude = rng.uniform(0.0, magnitude)
    elif self.magnitude_std > 0:
      magnitude = rng.normal(magnitude, self.magnitude_std)
    return float(min(max(magnitude, 0.0), self.magnitude_max))

  def apply_op(self, img: Image.Image, name: str, magnitude: float,
               rng: np.random.Generator) -> Image.Image:
    """Applies op `name` at exactly `magnitude` (0–10 scale), always (no probability)."""
    if name not in _OPS:
      raise KeyError(f'RandAugment: unknown op {name!r}; known: {sorted(_OPS)}.')
    return _OPS[name](img, float(magnitude), rng, self._ctx)

  def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    chosen = rng.integers(0, len(self.ops), size=self.num_layers)
    for index in chosen:
      if self.prob < 1.0 and rng.random() > self.prob:
        continue
      img = self.apply_op(img, self.ops[int(index)], self.sample_magnitude(rng), rng)
    return img


# ---------------------------------------------------------------------------------------------
# Random erasing (timm `RandomErasing(probability, mode='pixel', max_count=count)`).

def random_erasing(
    arr: np.ndarray, rng: np.random.Generator, prob: float = 0.25,
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    area: tuple[float, float] = (0.02, 1 / 3),
    log_ratio: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3)),
    count: int = 1,
) -> np.ndarray:
  """Erases a random box of a `uint8 [H, W, 3]` image with per-pixel Gaussian noise.

  timm's 'pixel' mode writes N(0, 1) values into the *normalised* image. We send uint8 to the
  device and normalise there, so the box is filled with `255 * (mean + std * z)` per pixel and
  channel, `z ~ N(0, 1)`, rounded and clipped to 0–255: after the device's `(x/255 - mean)/std`
  this is timm's `z` up to uint8 rounding (|error| <= 0.5/255/std, about 0.009), except where
  clipping bites (`z < -mean/std` or `z > (1-mean)/std`: about 2–4% of values per channel,
  e.g. red z < -2.12 or z > 2.25), which come out at those bounds.

  With probability `prob` the image is erased; the number of boxes is `count`, or uniform in
  [1, count] when `count > 1` (timm), each with area fraction in `area / n_boxes`. A box takes
  up to 10 attempts of area fraction uniform in `area` and log aspect (h/w) uniform in
  `log_ratio`; it needs `h < H` and `w < W`, else that box is skipped.

  Returns a new array when something was erased, else `arr` itself (never modified in place).
  """
  if arr.dtype != np.uint8 or arr.ndim != 3:
    raise ValueError(f'random_erasing: expected uint8 [H, W, C], got {arr.dtype} {arr.shape}.')
  if rng.random() >= prob:
    return arr
  height, width, channels = arr.shape
  n_boxes = int(rng.integers(1, count + 1)) if count > 1 else count
  mean255 = 255.0 * np.asarray(mean, np.float64)
  std255 = 255.0 * np.asarray(std, np.float64)
  out = arr
  for _ in range(n_boxes):
    for _ in range(10):
      target_area = rng.uniform(area[0], area[1]) * height * width / n_boxes
      aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
      h = int(round(math.sqrt(target_area * aspect)))
      w = int(round(math.sqrt(target_area / aspect)))
      if w < width and h < height:
        top = int(rng.integers(0, height - h + 1))
        left = int(rng.integers(0, width - w + 1))
        noise = rng.standard_normal((h, w, channels))
        fill = np.clip(np.rint(mean255 + std255 * noise), 0, 255).astype(np.uint8)
        if out is arr:
          out = arr.copy()
        out[top:top + h, left:left + w] = fill
        break
  return out

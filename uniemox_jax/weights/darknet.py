"""Darknet's files: the ``.cfg`` network description and the ``.weights`` binary, both ways.

The cfg is read into our :class:`~uniemox_jax.models.yolo.Architecture` and written from one
(:func:`write_cfg`), so nothing ships a copy of Darknet's yolov3.cfg: the architecture is ours
(:func:`~uniemox_jax.models.yolo.yolov3`) and its cfg text is generated when a tool needs one.
Only what YOLOv3 inference needs is supported; any other layer type (``[maxpool]``, ...),
option, or option value that would change the output fails with its name and line.
Training-only options (learning rate, augmentation, loss thresholds) are accepted and ignored.

A ``.weights`` file (as Darknet's ``save_weights`` writes it, little-endian):

  int32 major, int32 minor, int32 revision
  seen: uint64 when major·10 + minor >= 2 (yolov3.weights: 0.2.0), else int32
  then, for every [convolutional] layer in cfg order, float32:
    bias[filters]; with batch_normalize also scale[filters], mean[filters], variance[filters]
    weights[filters, channels_in, size, size]

Nothing else is in the file, so its size must be exactly the header plus the float count the
cfg implies: a truncated or over-long file (weights of another cfg, another class count, a
failed download) fails naming the expected and found number of floats. On conversion batch
norm is folded into each convolution the way Darknet normalises, ``(x − mean)/(√var + 1e-6)``.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Mapping
from pathlib import Path

from absl import logging
import numpy as np

from uniemox_jax.models import yolo

BN_EPS = 1e-6   # Darknet's normalize_cpu: (x - mean) / (sqrt(var) + .000001f)
DEFAULT_VERSION = (0, 2, 0)   # what yolov3.weights carries

# What each section accepts. Options in IGNORED_* change nothing at inference time.
_NET_OPTIONS = ('width', 'height', 'channels')
_IGNORED_NET = (
    'batch', 'subdivisions', 'momentum', 'decay', 'angle', 'saturation', 'exposure', 'hue',
    'learning_rate', 'burn_in', 'max_batches', 'policy', 'steps', 'scales', 'step', 'scale',
    'gamma', 'power', 'max_crop', 'min_crop', 'aspect', 'jitter', 'flip', 'time_steps',
    'notruth', 'random', 'adam', 'B1', 'B2', 'eps', 'max_ratio', 'min_ratio', 'center',
    'clip')
_CONV_OPTIONS = ('filters', 'size', 'stride', 'pad', 'padding', 'batch_normalize',
                 'activation')
_SHORTCUT_OPTIONS = ('from', 'activation')
_ROUTE_OPTIONS = ('layers',)
_UPSAMPLE_OPTIONS = ('stride',)
_YOLO_OPTIONS = ('mask', 'anchors', 'classes', 'num')
_IGNORED_YOLO = ('jitter', 'ignore_thresh', 'truth_thresh', 'random', 'max')
# Options accepted only at the value that makes them a no-op.
_NEUTRAL = {
    'convolutional': {'groups': '1', 'binary': '0', 'xnor': '0', 'dilation': '1'},
    'shortcut': {'alpha': '1', 'beta': '1'},
    'upsample': {'scale': '1'},
}
_SECTIONS = {
    'net': (_NET_OPTIONS, _IGNORED_NET),
    'convolutional': (_CONV_OPTIONS, ()),
    'shortcut': (_SHORTCUT_OPTIONS, ()),
    'route': (_ROUTE_OPTIONS, ()),
    'upsample': (_UPSAMPLE_OPTIONS, ()),
    'yolo': (_YOLO_OPTIONS, _IGNORED_YOLO),
}
_ALIASES = {'network': 'net', 'conv': 'convolutional'}


# ------------------------------------------------------------------------------ errors

class DarknetError(ValueError):
  """A Darknet file we cannot use (the message names the file and what is wrong)."""


class CfgError(DarknetError):
  """A cfg that is malformed or does not describe a network we can build.

  Attributes: ``path``, ``line`` (1-based, of the offending option or section).
  """

  def __init__(self, path: str, line: int, message: str):
    self.path, self.line = path, line
    super().__init__(f'{path}:{line}: {message}')


class UnsupportedLayerError(CfgError):
  """A section (layer type) we do not implement, e.g. ``[maxpool]``."""


class UnsupportedOptionError(CfgError):
  """An option, or an option value, that we do not implement (e.g. ``activation=mish``)."""


class FiltersMismatchError(CfgError):
  """A ``[yolo]`` layer whose preceding conv has not ``len(mask)·(5 + classes)`` filters."""


class WeightsSizeError(DarknetError):
  """A ``.weights`` file with more or fewer floats than its cfg needs.

  Attributes: ``expected`` and ``found`` float32 counts after the header.
  """

  def __init__(self, message: str, expected: int, found: int):
    self.expected, self.found = expected, found
    super().__init__(message)


# ------------------------------------------------------------------------------ cfg

@dataclasses.dataclass
class _Section:
  kind: str
  line: int
  options: dict[str, tuple[str, int]]   # key -> (value, line)


def _sections(text: str, path: str) -> list[_Section]:
  sections: list[_Section] = []
  for n, raw in enumerate(text.splitlines(), start=1):
    line = raw.strip()
    if not line or line[0] in '#;':
      continue
    if line.startswith('['):
      if not line.endswith(']'):
        raise CfgError(path, n, f'malformed section header {line!r} (expected [name])')
      kind = line[1:-1].strip().lower()
      sections.append(_Section(_ALIASES.get(kind, kind), n, {}))
      continue
    if '=' not in line:
      raise CfgError(path, n, f'expected key=value, got {line!r}')
    if not sections:
      raise CfgError(path, n, f'option {line!r} before the first [section]')
    key, value = (s.strip() for s in line.split('=', 1))
    section = sections[-1]
    if key in section.options:
      raise CfgError(path, n, f'option {key!r} given twice in [{section.kind}] (first at '
                              f'line {section.options[key][1]})')
    section.options[key] = (value, n)
  return sections


def _check_options(section: _Section, path: str, layer: int | None) -> None:
  known, ignored = _SECTIONS[section.kind]
  neutral = _NEUTRAL.get(section.kind, {})
  where = f'[{section.kind}]' + (f' (layer {layer})' if layer is not None else '')
  for key, (value, line) in section.options.items():
    if key in known or key in ignored:
      if key in ignored:
        logging.debug('%s:%d: ignoring training-only option %s=%s', path, line, key, value)
      continue
    if key in neutral:
      if value.replace(' ', '') != neutral[key]:
        raise UnsupportedOptionError(
            path, line, f'option {key}={value} of {where} is not supported (only '
                        f'{key}={neutral[key]}, the default, is)')
      continue
    raise UnsupportedOptionError(
        path, line, f'option {key!r} of {where} is not supported; supported options: '
                    f'{", ".join(known + tuple(neutral))}')


class _Reader:
  """Typed access to one section's options, failing with the option's line."""

  def __init__(self, section: _Section, path: str):
    self.section, self.path = section, path

  def line(self, key: str) -> int:
    return self.section.options.get(key, ('', self.section.line))[1]

  def has(self, key: str) -> bool:
    return key in self.section.options

  def raw(self, key: str, default: str | None = None) -> str:
    if key not in self.section.options:
      if default is None:
        raise CfgError(self.path, self.section.line,
                       f'[{self.section.kind}] needs option {key!r}')
      return default
    return self.section.options[key][0]

  def int(self, key: str, default: int | None = None) -> int:
    value = self.raw(key, None if default is None else str(default))
    try:
      return int(value)
    except ValueError:
      raise CfgError(self.path, self.line(key),
                     f'option {key}={value!r} is not an integer') from None

  def ints(self, key: str, default: str | None = None) -> tuple[int, ...]:
    value = self.raw(key, default)
    try:
      return tuple(int(v) for v in value.split(',') if v.strip())
    except ValueError:
      raise CfgError(self.path, self.line(key),
                     f'option {key}={value!r} is not a list of integers') from None

  def floats(self, key: str) -> tuple[float, ...]:
    value = self.raw(key)
    try:
      return tuple(float(v) for v in value.split(',') if v.strip())
    except ValueError:
      raise CfgError(self.path, self.line(key),
                     f'option {key}={value!r} is not a list of numbers') from None

  def activation(self, default: str) -> str:
    value = self.raw('activation', default)
    if value not in yolo.ACTIVATIONS:
      raise UnsupportedOptionError(
          self.path, self.line('activation'),
          f'activation={value} of [{self.section.kind}] is not supported (only '
          f'{" and ".join(yolo.ACTIVATIONS)}'
          + ('; Darknet\'s default when none is given is logistic' if not self.has('activation')
             else '') + ')')
    return value


def parse_cfg_text(text: str, source: str = '<cfg>') -> yolo.Architecture:
  """A Darknet cfg (its text) → :class:`~uniemox_jax.models.yolo.Architecture`.

  Raises :class:`CfgError` (and its subclasses :class:`UnsupportedLayerError`,
  :class:`UnsupportedOptionError`, :class:`FiltersMismatchError`) naming ``source`` and the
  line.
  """
  sections = _sections(text, source)
  if not sections or sections[0].kind != 'net':
    raise CfgError(source, sections[0].line if sections else 1,
                   'a cfg starts with a [net] section (input width, height, channels)')
  for s in sections[1:]:
    if s.kind not in _SECTIONS or s.kind == 'net':
      raise UnsupportedLayerError(
          source, s.line, f'layer [{s.kind}] (layer {sections.index(s) - 1}) is not supported; '
                          'supported: [convolutional], [shortcut], [route], [upsample], [yolo]')
  net = _Reader(sections[0], source)
  _check_options(sections[0], source, None)
  width, height, channels = net.int('width', 416), net.int('height', 416), net.int('channels', 3)
  layers: list[yolo.Layer] = []
  for index, s in enumerate(sections[1:]):
    _check_options(s, source, index)
    r = _Reader(s, source)
    if s.kind == 'convolutional':
      size = r.int('size', 1)
      # Darknet: pad=1 means size/2 zero padding, else `padding` (default 0) pixels.
      pad = bool(r.int('pad', 0))
      padding = r.int('padding', 0)
      if not pad and padding not in (0, size // 2):
        raise UnsupportedOptionError(
            source, r.line('padding'), f'padding={padding} of [convolutional] (layer {index}) '
                                       f'is not supported (only 0 or size/2 = {size // 2})')
      pad = pad or (padding == size // 2 and padding > 0)
      if size % 2 == 0 and pad:
        raise UnsupportedOptionError(source, r.line('size'),
                                     f'size={size} with padding: only odd sizes are supported')
      layers.append(yolo.Conv(
          filters=r.int('filters', 1), size=size, stride=r.int('stride', 1),
          batch_normalize=bool(r.int('batch_normalize', 0)),
          activation=r.activation('logistic'), pad=pad))
    elif s.kind == 'shortcut':
      sources = r.ints('from')
      if len(sources) != 1:
        raise UnsupportedOptionError(source, r.line('from'),
                                     f'from={r.raw("from")}: only one layer is supported')
      layers.append(yolo.Shortcut(sources[0], activation=r.activation('linear')))
    elif s.kind == 'route':
      layers.append(yolo.Route(r.ints('layers')))
    elif s.kind == 'upsample':
      stride = r.int('stride', 2)
      if stride <= 0:
        raise UnsupportedOptionError(source, r.line('stride'),
                                     f'upsample stride={stride}: only positive strides '
                                     '(no downsampling) are supported')
      layers.append(yolo.Upsample(stride))
    elif s.kind == 'yolo':
      values = r.floats('anchors')
      if len(values) % 2 or any(v != int(v) for v in values):
        raise CfgError(source, r.line('anchors'), 'anchors must be pairs of whole pixels '
                                                  f'w,h, got {r.raw("anchors")}')
      anchors = tuple((int(values[i]), int(values[i + 1])) for i in range(0, len(values), 2))
      num = r.int('num', len(anchors))
      if num != len(anchors):
        raise CfgError(source, r.line('num'), f'num={num} but {len(anchors)} anchor pairs '
                                              'are given')
      mask = r.ints('mask', ','.join(str(i) for i in range(num)))
      classes = r.int('classes', 20)
      prev = layers[-1] if layers else None
      want = len(mask) * (5 + classes)
      if isinstance(prev, yolo.Conv) and prev.filters != want:
        conv = _Reader(sections[index], source)
        raise FiltersMismatchError(
            source, conv.line('filters'),
            f'[convolutional] layer {index - 1} has filters={prev.filters}, but the [yolo] '
            f'layer after it (line {s.line}) has {len(mask)} anchors (mask={r.raw("mask", "")})'
            f' x (5 + classes={classes}) = {want} outputs; set filters={want} or fix classes')
      layers.append(yolo.Yolo(mask, anchors, classes))
  arch = yolo.Architecture(width, height, channels, tuple(layers))
  try:
    arch.shapes()
  except yolo.ArchitectureError as e:
    line = sections[e.layer + 1].line if 0 <= e.layer < len(layers) else sections[0].line
    raise CfgError(source, line, f'[{sections[e.layer + 1].kind}] layer {e.layer}: '
                                 f'{e.detail}') from None
  return arch


def parse_cfg(path: str | os.PathLike) -> yolo.Architecture:
  """Reads a Darknet cfg file (see :func:`parse_cfg_text`)."""
  path = Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f'Darknet cfg {path} does not exist (yolov3.cfg of the Darknet '
                            'release, or leave --yolo_cfg unset for our YOLOv3).')
  return parse_cfg_text(path.read_text(encoding='utf-8', errors='replace'), os.fspath(path))


def write_cfg(arch: yolo.Architecture, path: str | os.PathLike | None = None,
              comment: str = '') -> str:
  """The Darknet cfg text of ``arch`` (written to ``path`` too when given).

  The result reads back as the same architecture (:func:`parse_cfg_text`), and Darknet and
  OpenCV's importer read it as the same network.
  """
  arch.shapes()
  lines = ['# Written by uniemox_jax.weights.darknet.write_cfg from our architecture '
           'definition.']
  if comment:
    lines += [f'# {c}' for c in comment.splitlines()]
  lines += ['[net]', 'batch=1', 'subdivisions=1', f'width={arch.width}',
            f'height={arch.height}', f'channels={arch.channels}', '']
  for i, layer in enumerate(arch.layers):
    lines.append(f'# layer {i}')
    if isinstance(layer, yolo.Conv):
      lines.append('[convolutional]')
      if layer.batch_normalize:
        lines.append('batch_normalize=1')
      lines += [f'filters={layer.filters}', f'size={layer.size}', f'stride={layer.stride}',
                f'pad={int(layer.pad)}', f'activation={layer.activation}']
    elif isinstance(layer, yolo.Shortcut):
      lines += ['[shortcut]', f'from={layer.source}', f'activation={layer.activation}']
    elif isinstance(layer, yolo.Route):
      lines += ['[route]', f'layers={", ".join(str(r) for r in layer.layers)}']
    elif isinstance(layer, yolo.Upsample):
      lines += ['[upsample]', f'stride={layer.stride}']
    elif isinstance(layer, yolo.Yolo):
      lines += ['[yolo]', f'mask={",".join(str(m) for m in layer.mask)}',
                'anchors=' + ',  '.join(f'{w},{h}' for w, h in layer.anchors),
                f'classes={layer.classes}', f'num={len(layer.anchors)}']
    lines.append('')
  text = '\n'.join(lines)
  if path is not None:
    Path(path).write_text(text, encoding='utf-8')
  return text


# ------------------------------------------------------------------------------ weights

@dataclasses.dataclass(frozen=True)
class WeightsHeader:
  """The header of a ``.weights`` file; ``size`` is its length in bytes (16 or 20)."""
  major: int
  minor: int
  revision: int
  seen: int
  size: int

  @property
  def version(self) -> str:
    return f'{self.major}.{self.minor}.{self.revision}'


@dataclasses.dataclass
class ConvWeights:
  """One conv layer's arrays as Darknet stores them (``weights``: ``[out, in, k, k]``).

  ``scale``, ``mean`` and ``variance`` are None for a layer without batch norm, whose
  ``bias`` is the conv bias (else it is batch norm's β).
  """
  bias: np.ndarray
  weights: np.ndarray
  scale: np.ndarray | None = None
  mean: np.ndarray | None = None
  variance: np.ndarray | None = None


def _seen_is_64bit(major: int, minor: int) -> bool:
  return (major * 10 + minor) >= 2 and major < 1000 and minor < 1000


def header_size(major: int, minor: int) -> int:
  return 20 if _seen_is_64bit(major, minor) else 16


def read_header(data: bytes, source: str) -> WeightsHeader:
  if len(data) < 16:
    raise WeightsSizeError(f'{source}: {len(data)} bytes, shorter than a Darknet .weights '
                           'header (16 or 20 bytes). Is it a weights file?', 0, 0)
  major, minor, revision = struct.unpack('<3i', data[:12])
  if major > 1000 or minor > 1000:
    # Darknet writes such files transposed (its `transpose` flag); nobody ships them.
    raise DarknetError(f'{source}: version {major}.{minor}.{revision} marks transposed '
                       'weights, which are not supported.')
  size = header_size(major, minor)
  if len(data) < size:
    raise WeightsSizeError(f'{source}: {len(data)} bytes, shorter than the {size}-byte header '
                           f'of a version {major}.{minor}.{revision} .weights file.', 0, 0)
  seen = (struct.unpack('<Q', data[12:20])[0] if size == 20
          else struct.unpack('<i', data[12:16])[0])
  return WeightsHeader(major, minor, revision, int(seen), size)


def conv_layout(arch: yolo.Architecture) -> list[tuple[int, yolo.Conv, int]]:
  """``(layer index, conv, input channels)`` of every conv layer, in file order."""
  shapes = arch.shapes()
  return [(i, l, arch.channels if i == 0 else shapes[i - 1][2])
          for i, l in enumerate(arch.layers) if isinstance(l, yolo.Conv)]


def _layer_floats(conv: yolo.Conv, c_in: int) -> int:
  return conv.filters * (4 if conv.batch_normalize else 1) + conv.filters * c_in * conv.size ** 2


def expected_floats(arch: yolo.Architecture) -> int:
  """The number of float32 values after the header of ``arch``'s weights file."""
  return sum(_layer_floats(conv, c_in) for _, conv, c_in in conv_layout(arch))


def read_darknet_weights(path: str | os.PathLike, arch: yolo.Architecture,
                         cfg_name: str = 'the cfg'
                         ) -> tuple[dict[int, ConvWeights], WeightsHeader]:
  """The raw arrays of every conv layer of ``arch`` from a ``.weights`` file.

  Returns ``({layer index: ConvWeights}, header)``. Raises :class:`WeightsSizeError` when
  the file holds more or fewer floats than ``arch`` needs (naming both counts and, for a
  short file, the first layer it cannot fill).
  """
  path = Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f'Darknet weights {path} do not exist (yolov3.weights of the '
                            'Darknet release; nothing is downloaded).')
  data = path.read_bytes()
  header = read_header(data, os.fspath(path))
  body = len(data) - header.size
  layout = conv_layout(arch)
  expected = expected_floats(arch)
  found, extra_bytes = divmod(body, 4)
  where = (f'{path}: Darknet {header.version} weights (seen={header.seen}, {header.size}-byte '
           f'header) for {cfg_name} ({len(layout)} convolutional layers, '
           f'{arch.classes} classes) must hold exactly {expected} float32 values after the '
           'header')
  if extra_bytes:
    raise WeightsSizeError(f'{where}, but {body} bytes follow it: not a whole number of '
                           'floats. The file is damaged.', expected, found)
  if found != expected:
    if found < expected:
      done, short = 0, ''
      for i, conv, c_in in layout:
        n = _layer_floats(conv, c_in)
        if done + n > found:
          short = (f'; it ends inside layer {i} (conv_{i}, floats {done}..{done + n})')
          break
        done += n
      detail = f'found {found}: the file is truncated ({expected - found} floats missing){short}'
    else:
      detail = (f'found {found}: {found - expected} floats too many (weights of a larger '
                'network, or of another class count?)')
    raise WeightsSizeError(f'{where}; {detail}. Use the weights that go with this cfg.',
                           expected, found)
  floats = np.frombuffer(data, dtype='<f4', offset=header.size)
  out: dict[int, ConvWeights] = {}
  pos = 0

  def take(n: int) -> np.ndarray:
    nonlocal pos
    arr = floats[pos:pos + n]
    pos += n
    return arr

  for i, conv, c_in in layout:
    f = conv.filters
    bias = take(f)
    scale = mean = var = None
    if conv.batch_normalize:
      scale, mean, var = take(f), take(f), take(f)
    weights = take(f * c_in * conv.size ** 2).reshape(f, c_in, conv.size, conv.size)
    out[i] = ConvWeights(bias, weights, scale, mean, var)
  assert pos == expected
  return out, header


def write_darknet_weights(path: str | os.PathLike, arch: yolo.Architecture,
                          layers: Mapping[int, ConvWeights],
                          version: tuple[int, int, int] = DEFAULT_VERSION,
                          seen: int = 0) -> None:
  """Writes ``layers`` (``{conv layer index: ConvWeights}``) as Darknet's ``save_weights``
  would, with the ``seen`` field 8 bytes wide for versions >= 0.2 and 4 bytes below."""
  major, minor, revision = version
  chunks = [struct.pack('<3i', major, minor, revision),
            struct.pack('<Q', seen) if _seen_is_64bit(major, minor) else struct.pack('<i', seen)]
  for i, conv, c_in in conv_layout(arch):
    w = layers[i]
    parts = [w.bias] + ([w.scale, w.mean, w.variance] if conv.batch_normalize else [])
    want = (conv.filters, c_in, conv.size, conv.size)
    if tuple(w.weights.shape) != want:
      raise ValueError(f'layer {i}: weights of shape {w.weights.shape}, expected {want}')
    for p in parts + [w.weights]:
      chunks.append(np.ascontiguousarray(p, dtype='<f4').tobytes())
  Path(path).write_bytes(b''.join(chunks))


def random_darknet_weights(arch: yolo.Architecture, seed: int = 0
                           ) -> dict[int, ConvWeights]:
  """Random weights of the right shapes, scaled so activations stay O(1) through the
  network (for tests and benchmarks: a random-weight detector finds random boxes)."""
  rng = np.random.default_rng(seed)
  out = {}
  for i, conv, c_in in conv_layout(arch):
    f, k = conv.filters, conv.size
    # He-style for leaky layers; a residual branch's last conv is damped (a shortcut follows)
    # so the 23 residual additions of Darknet-53 do not blow the activations up.
    gain = 0.5 if (i + 1 < len(arch.layers)
                   and isinstance(arch.layers[i + 1], yolo.Shortcut)) else 1.4
    weights = rng.standard_normal((f, c_in, k, k), dtype=np.float32)
    weights *= np.float32(gain / np.sqrt(c_in * k * k))
    if conv.batch_normalize:
      out[i] = ConvWeights(bias=rng.normal(0, 0.1, f).astype(np.float32), weights=weights,
                           scale=rng.uniform(0.5, 1.5, f).astype(np.float32),
                           mean=rng.normal(0, 0.1, f).astype(np.float32),
                           variance=rng.uniform(0.5, 1.5, f).astype(np.float32))
    else:
      out[i] = ConvWeights(bias=rng.normal(0, 0.5, f).astype(np.float32), weights=weights)
  return out


def to_params(arch: yolo.Architecture, layers: Mapping[int, ConvWeights]
              ) -> dict[str, dict[str, np.ndarray]]:
  """Darknet arrays → :class:`~uniemox_jax.models.yolo.YOLOv3` params, batch norm folded.

  ``{'conv_<i>': {'kernel': float32 [k, k, C_in, C_out], 'bias': float32 [C_out]}}``.
  """
  params = {}
  for i, conv, c_in in conv_layout(arch):
    w = layers[i]
    kernel = np.asarray(w.weights, np.float64).transpose(2, 3, 1, 0)   # OIHW -> HWIO
    bias = np.asarray(w.bias, np.float64)
    if conv.batch_normalize:
      s = np.asarray(w.scale, np.float64) / (np.sqrt(np.asarray(w.variance, np.float64))
                                             + BN_EPS)
      kernel = kernel * s
      bias = bias - np.asarray(w.mean, np.float64) * s
    params[f'conv_{i}'] = {'kernel': kernel.astype(np.float32), 'bias': bias.astype(np.float32)}
  return params


@dataclasses.dataclass(frozen=True)
class Loaded:
  """What :func:`load` read: the architecture, converted params and where they came from."""
  arch: yolo.Architecture
  params: dict[str, dict[str, np.ndarray]]
  header: WeightsHeader
  weights_path: str
  cfg_path: str | None


def load(weights_path: str | os.PathLike, cfg_path: str | os.PathLike | None = None,
         size: int | None = None) -> Loaded:
  """A YOLOv3 from Darknet files: ``cfg_path`` (default: our :func:`yolo.yolov3`, the same
  network as Darknet's yolov3.cfg) and ``weights_path``; ``size`` overrides the cfg's input
  size (a multiple of 32)."""
  if cfg_path:
    arch = parse_cfg(cfg_path)
    name = os.fspath(cfg_path)
  else:
    arch = yolo.yolov3()
    name = 'YOLOv3 (yolov3.cfg layout, 80 COCO classes)'
  if size is not None:
    arch = arch.with_size(size)
    try:
      arch.shapes()
    except yolo.ArchitectureError as e:
      raise DarknetError(f'input size {size} does not fit {name} (use a multiple of its '
                         f'largest stride, 32 for YOLOv3): {e}') from None
  layers, header = read_darknet_weights(weights_path, arch, name)
  params = to_params(arch, layers)
  logging.info('Loaded Darknet weights %s (version %s, seen %d) for %s: %d conv layers, '
               '%.1fM parameters.', weights_path, header.version, header.seen, name,
               len(layers), yolo.num_params(arch) / 1e6)
  return Loaded(arch, params, header, os.fspath(weights_path),
                os.fspath(cfg_path) if cfg_path else None)

"""YOLOv3 (Redmon & Farhadi, 2018) as a linen module, from our own architecture definition.

An :class:`Architecture` is the network as Darknet's cfg describes it: the input size and a
list of layers (:class:`Conv`, :class:`Shortcut`, :class:`Route`, :class:`Upsample`,
:class:`Yolo`), indexed as Darknet counts them (a route's ``-4`` is relative, ``61`` absolute).
:func:`yolov3` builds the COCO detector the paper uses: Darknet-53 (52 convolutions and 23
residual shortcuts), then three detection scales (strides 32, 16, 8) joined by 1×1 conv +
nearest upsample + route, leaky ReLU 0.1 everywhere but the three linear head convolutions.
The cfg text of an architecture, and the reverse, live in :mod:`uniemox_jax.weights.darknet`.

:class:`YOLOv3` is for inference: batch norm is folded into the convolutions when weights
are converted (``kernel·γ/(√var + 1e-6)``, Darknet's normalisation), so every convolution is
a plain ``nn.Conv`` with a bias, named ``conv_<layer index>`` like OpenCV's Darknet importer
names it. It returns the raw outputs of the head convolutions (what feeds each ``[yolo]``
layer); decoding, scores and NMS are pure functions in :mod:`uniemox_jax.detection`.
Images are NHWC.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Union

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

Dtype = Any
ACTIVATIONS = ('leaky', 'linear')
LEAKY_SLOPE = 0.1   # Darknet's leaky ReLU: x > 0 ? x : 0.1·x

# The COCO anchors of yolov3.cfg, (w, h) in input pixels at 416 px; masks per scale.
COCO_ANCHORS: tuple[tuple[int, int], ...] = (
    (10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198),
    (373, 326))
COCO_MASKS: tuple[tuple[int, ...], ...] = ((6, 7, 8), (3, 4, 5), (0, 1, 2))
COCO_CLASSES = 80
PERSON_CLASS = 0    # 'person' is class 0 of COCO's 80 (coco.names)


class ArchitectureError(ValueError):
  """An architecture that cannot be built; ``layer`` is the index of the offending layer."""

  def __init__(self, layer: int, message: str):
    self.layer = layer
    self.detail = message
    super().__init__(f'layer {layer}: {message}')


@dataclasses.dataclass(frozen=True)
class Conv:
  """``[convolutional]``: ``filters`` kernels of ``size``×``size``, zero padding ``size // 2``
  when ``pad`` (Darknet's ``pad=1``), batch norm (folded at load time) or a plain bias."""
  filters: int
  size: int
  stride: int = 1
  batch_normalize: bool = True
  activation: str = 'leaky'
  pad: bool = True


@dataclasses.dataclass(frozen=True)
class Shortcut:
  """``[shortcut]``: the previous layer's output plus layer ``source`` (``from=``), linear."""
  source: int
  activation: str = 'linear'


@dataclasses.dataclass(frozen=True)
class Route:
  """``[route]``: the channel concatenation of ``layers`` (negative: relative)."""
  layers: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Upsample:
  """``[upsample]``: nearest-neighbour upsampling by ``stride``."""
  stride: int = 2


@dataclasses.dataclass(frozen=True)
class Yolo:
  """``[yolo]``: a detection scale over the previous layer's output.

  ``anchors`` are all of the cfg's anchors, (w, h) in input pixels; ``mask`` picks this
  scale's. The previous layer must have ``len(mask) * (5 + classes)`` channels.
  """
  mask: tuple[int, ...]
  anchors: tuple[tuple[int, int], ...]
  classes: int

  @property
  def scale_anchors(self) -> tuple[tuple[int, int], ...]:
    return tuple(self.anchors[m] for m in self.mask)


Layer = Union[Conv, Shortcut, Route, Upsample, Yolo]


def resolve(index: int, ref: int) -> int:
  """Darknet's layer references: negative means relative to layer ``index``."""
  return index + ref if ref < 0 else ref


@dataclasses.dataclass(frozen=True)
class Head:
  """One detection scale: its ``[yolo]`` layer, the conv feeding it, anchors, classes, stride."""
  layer: int
  conv_layer: int
  anchors: tuple[tuple[int, int], ...]
  classes: int
  stride: int


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A Darknet network: input ``width`` × ``height`` × ``channels`` and its ``layers``."""
  width: int
  height: int
  channels: int
  layers: tuple[Layer, ...]

  def shapes(self) -> list[tuple[int, int, int]]:
    """``(H, W, C)`` of every layer's output; raises :class:`ArchitectureError` for layers
    that do not fit together (bad references, shapes that cannot be added or concatenated,
    a head conv whose filters do not match its ``[yolo]`` layer's classes)."""
    if not self.layers:
      raise ArchitectureError(0, 'the network has no layers')
    if self.width <= 0 or self.height <= 0 or self.channels <= 0:
      raise ArchitectureError(
          0, f'input size {self.width}x{self.height}x{self.channels} must be positive')
    shapes: list[tuple[int, int, int]] = []
    h, w, c = self.height, self.width, self.channels
    for i, layer in enumerate(self.layers):
      if isinstance(layer, Conv):
        if layer.filters <= 0 or layer.size <= 0 or layer.stride <= 0:
          raise ArchitectureError(i, f'filters, size and stride must be positive, got {layer}')
        if layer.activation not in ACTIVATIONS:
          raise ArchitectureError(i, f'activation {layer.activation!r} is not one of '
                                     f'{ACTIVATIONS}')
        pad = layer.size // 2 if layer.pad else 0
        h = (h + 2 * pad - layer.size) // layer.stride + 1
        w = (w + 2 * pad - layer.size) // layer.stride + 1
        if h <= 0 or w <= 0:
          raise ArchitectureError(i, f'the input is too small: output {h}x{w}')
        c = layer.filters
      elif isinstance(layer, Shortcut):
        j = self._ref(i, layer.source, shapes)
        if layer.activation != 'linear':
          raise ArchitectureError(i, f'shortcut activation {layer.activation!r}: only '
                                     "'linear' is supported")
        if shapes[j] != (h, w, c):
          raise ArchitectureError(i, f'shortcut adds layer {j} of shape {shapes[j]} to the '
                                     f'previous layer of shape {(h, w, c)}')
      elif isinstance(layer, Route):
        if not layer.layers:
          raise ArchitectureError(i, 'route without layers')
        refs = [self._ref(i, r, shapes) for r in layer.layers]
        sizes = {shapes[j][:2] for j in refs}
        if len(sizes) != 1:
          raise ArchitectureError(i, f'route concatenates layers {refs} of different sizes '
                                     f'{[shapes[j] for j in refs]}')
        (h, w), c = sizes.pop(), sum(shapes[j][2] for j in refs)
      elif isinstance(layer, Upsample):
        if layer.stride <= 0:
          raise ArchitectureError(i, f'upsample stride must be positive, got {layer.stride}')
        h, w = h * layer.stride, w * layer.stride
      elif isinstance(layer, Yolo):
        if layer.classes <= 0:
          raise ArchitectureError(i, f'classes must be positive, got {layer.classes}')
        bad = [m for m in layer.mask if not 0 <= m < len(layer.anchors)]
        if not layer.mask or bad:
          raise ArchitectureError(i, f'mask {list(layer.mask)} must index the '
                                     f'{len(layer.anchors)} anchors')
        want = len(layer.mask) * (5 + layer.classes)
        if i == 0 or not isinstance(self.layers[i - 1], Conv):
          raise ArchitectureError(i, 'a [yolo] layer must follow a [convolutional] layer')
        if c != want:
          raise ArchitectureError(
              i, f'the convolution before it has filters={c}, but {len(layer.mask)} anchors '
                 f'x (5 + classes={layer.classes}) = {want} are needed')
      else:
        raise ArchitectureError(i, f'unknown layer {layer!r}')
      shapes.append((h, w, c))
    if not any(isinstance(l, Yolo) for l in self.layers):
      raise ArchitectureError(len(self.layers) - 1, 'the network has no [yolo] layer')
    return shapes

  @staticmethod
  def _ref(i: int, ref: int, shapes: list) -> int:
    j = resolve(i, ref)
    if not 0 <= j < i:
      raise ArchitectureError(i, f'refers to layer {ref} (= {j}), which is not an earlier layer')
    return j

  def heads(self) -> tuple[Head, ...]:
    """The detection scales, in layer order."""
    shapes = self.shapes()
    return tuple(Head(i, i - 1, l.scale_anchors, l.classes, self.height // shapes[i][0])
                 for i, l in enumerate(self.layers) if isinstance(l, Yolo))

  @property
  def classes(self) -> int:
    counts = {h.classes for h in self.heads()}
    if len(counts) != 1:
      raise ArchitectureError(self.heads()[-1].layer,
                              f'[yolo] layers disagree on classes: {sorted(counts)}')
    return counts.pop()

  def saved_layers(self) -> tuple[int, ...]:
    """Layers whose outputs a later route or shortcut reads (returned in ``aux``)."""
    saved = set()
    for i, layer in enumerate(self.layers):
      if isinstance(layer, Shortcut):
        saved.add(resolve(i, layer.source))
      elif isinstance(layer, Route):
        saved.update(resolve(i, r) for r in layer.layers)
    return tuple(sorted(saved))

  def with_size(self, width: int, height: int | None = None) -> 'Architecture':
    """The same network for another input size (a multiple of the largest stride)."""
    return dataclasses.replace(self, width=width, height=width if height is None else height)


def _residual_stage(filters: int, blocks: int) -> list[Layer]:
  """Darknet-53's downsampling conv and its residual blocks (1×1 halve, 3×3 restore, add)."""
  layers: list[Layer] = [Conv(filters, 3, stride=2)]
  for _ in range(blocks):
    layers += [Conv(filters // 2, 1), Conv(filters, 3), Shortcut(-3)]
  return layers


def darknet53() -> list[Layer]:
  """Darknet-53 without its classifier: 52 convolutions, 23 shortcuts; layers 0–74.

  Outputs at stride 8 (layer 36, 256 channels), 16 (layer 61, 512) and 32 (layer 74, 1024).
  """
  layers: list[Layer] = [Conv(32, 3)]
  for filters, blocks in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
    layers += _residual_stage(filters, blocks)
  return layers


def _head_block(filters: int, outputs: int, mask: tuple[int, ...],
                anchors: tuple[tuple[int, int], ...], classes: int) -> list[Layer]:
  """Five alternating 1×1/3×3 convs, a 3×3, the linear 1×1 head conv and its [yolo]."""
  return [Conv(filters, 1), Conv(filters * 2, 3), Conv(filters, 1), Conv(filters * 2, 3),
          Conv(filters, 1), Conv(filters * 2, 3),
          Conv(outputs, 1, batch_normalize=False, activation='linear'),
          Yolo(mask, anchors, classes)]


def yolov3(classes: int = COCO_CLASSES, size: int = 416,
           anchors: tuple[tuple[int, int], ...] = COCO_ANCHORS,
           masks: tuple[tuple[int, ...], ...] = COCO_MASKS) -> Architecture:
  """YOLOv3 as in Darknet's yolov3.cfg: 107 layers, [yolo] at 82 (stride 32), 94 (16), 106 (8).

  The head convolutions feeding them are layers 81, 93 and 105, each with
  ``3 × (5 + classes)`` filters (255 for COCO).
  """
  layers = darknet53()                                               # 0-74
  out = lambda mask: len(mask) * (5 + classes)  # noqa: E731
  layers += _head_block(512, out(masks[0]), masks[0], anchors, classes)    # 75-82
  layers += [Route((-4,)), Conv(256, 1), Upsample(2), Route((-1, 61))]      # 83-86
  layers += _head_block(256, out(masks[1]), masks[1], anchors, classes)    # 87-94
  layers += [Route((-4,)), Conv(128, 1), Upsample(2), Route((-1, 36))]      # 95-98
  layers += _head_block(128, out(masks[2]), masks[2], anchors, classes)    # 99-106
  return Architecture(size, size, 3, tuple(layers))


def leaky_relu(x: jnp.ndarray) -> jnp.ndarray:
  return jnp.where(x > 0, x, LEAKY_SLOPE * x)


class YOLOv3(nn.Module):
  """The network of ``arch`` (batch norm folded), up to its raw head outputs.

  Call with ``x``: float ``[B, H, W, C]``, pixels in [0, 1] (RGB; letterbox grey 0.5), ``H``
  and ``W`` the architecture's ``height`` and ``width``.

  Returns ``(heads, aux)``: ``heads`` a tuple, one per ``[yolo]`` layer in layer order, of the
  head conv's raw output ``[B, H/s, W/s, A·(5 + classes)]`` (channel ``a·(5 + classes) + k``:
  anchor ``a``, entry ``k`` = tx, ty, tw, th, objectness, class logits, as Darknet lays them
  out); ``aux`` the outputs of the layers routes and shortcuts read, as ``'layer_<i>'``
  (for Darknet-53 ``layer_36``/``layer_61`` are the stride-8/16 features). Float32
  parameters; convolutions compute in ``dtype``; outputs are float32.
  """
  arch: Architecture
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> tuple[tuple[jnp.ndarray, ...], dict[str, jnp.ndarray]]:
    arch = self.arch
    want = (arch.height, arch.width, arch.channels)
    if tuple(x.shape[1:]) != want:
      raise ValueError(f'YOLOv3: input of shape {tuple(x.shape)}, expected [B, {want[0]}, '
                       f'{want[1]}, {want[2]}] (the cfg\'s height, width, channels).')
    arch.shapes()   # fails early, naming the layer, for architectures that do not fit
    saved = set(arch.saved_layers())
    outputs: dict[int, jnp.ndarray] = {}
    heads = []
    x = x.astype(self.dtype)
    for i, layer in enumerate(arch.layers):
      if isinstance(layer, Conv):
        pad = layer.size // 2 if layer.pad else 0
        x = nn.Conv(layer.filters, (layer.size, layer.size), strides=(layer.stride,) * 2,
                    padding=((pad, pad), (pad, pad)), use_bias=True, dtype=self.dtype,
                    param_dtype=jnp.float32, name=f'conv_{i}')(x)
        if layer.activation == 'leaky':
          x = leaky_relu(x)
      elif isinstance(layer, Shortcut):
        x = x + outputs[resolve(i, layer.source)]
      elif isinstance(layer, Route):
        parts = [outputs[resolve(i, r)] for r in layer.layers]
        x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
      elif isinstance(layer, Upsample):
        x = jnp.repeat(jnp.repeat(x, layer.stride, axis=1), layer.stride, axis=2)
      elif isinstance(layer, Yolo):
        heads.append(x.astype(jnp.float32))
      if i in saved:
        outputs[i] = x
    aux = {f'layer_{i}': outputs[i].astype(jnp.float32) for i in sorted(saved)}
    return tuple(heads), aux


def param_shapes(arch: Architecture) -> dict[str, dict[str, tuple[int, ...]]]:
  """``{'conv_<i>': {'kernel': (k, k, C_in, C_out), 'bias': (C_out,)}}`` of ``arch``."""
  shapes = arch.shapes()
  out = {}
  for i, layer in enumerate(arch.layers):
    if isinstance(layer, Conv):
      c_in = arch.channels if i == 0 else shapes[i - 1][2]
      out[f'conv_{i}'] = {'kernel': (layer.size, layer.size, c_in, layer.filters),
                          'bias': (layer.filters,)}
  return out


def num_params(arch: Architecture) -> int:
  return int(sum(np.prod(s) for p in param_shapes(arch).values() for s in p.values()))

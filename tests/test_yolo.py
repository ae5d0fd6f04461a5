"""YOLOv3: the Darknet cfg/weights loader, the network against OpenCV's Darknet importer,
decoding and NMS against plain NumPy references, letterbox/squash inputs and the mapping back.

Most tests use a tiny test-only architecture (non-square input, two scales, every layer
type); one test runs the full YOLOv3 layout at 416 px with random weights.
"""
import io
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from uniemox_jax import detection
from uniemox_jax.data import letterbox
from uniemox_jax.models import yolo
from uniemox_jax.weights import darknet

Y = yolo
CLASSES = 3


def tiny_arch(classes: int = CLASSES, width: int = 96, height: int = 64) -> yolo.Architecture:
  """Every supported layer type, strides 32 and 16, a W != H input (catches x/y mix-ups)."""
  out = 3 * (5 + classes)
  anchors = yolo.COCO_ANCHORS[:6]
  return yolo.Architecture(width, height, 3, (
      Y.Conv(8, 3), Y.Conv(16, 3, 2), Y.Conv(8, 1), Y.Conv(16, 3), Y.Shortcut(-3),   # 0-4
      Y.Conv(16, 3, 2), Y.Conv(20, 3, 2), Y.Conv(32, 3, 2),                           # 5-7
      Y.Conv(32, 3, 2), Y.Conv(16, 1),                                                # 8-9
      Y.Conv(out, 1, batch_normalize=False, activation='linear'),                     # 10
      Y.Yolo((3, 4, 5), anchors, classes),                                            # 11
      Y.Route((-3,)), Y.Conv(8, 1), Y.Upsample(2), Y.Route((-1, 7)),                  # 12-15
      Y.Conv(16, 3), Y.Conv(out, 1, batch_normalize=False, activation='linear'),      # 16-17
      Y.Yolo((0, 1, 2), anchors, classes)))                                           # 18


def write_files(tmp_path, arch, seed=0, version=darknet.DEFAULT_VERSION, name='net'):
  cfg, weights = tmp_path / f'{name}.cfg', tmp_path / f'{name}.weights'
  darknet.write_cfg(arch, cfg)
  darknet.write_darknet_weights(weights, arch, darknet.random_darknet_weights(arch, seed),
                                version=version, seen=123456)
  return cfg, weights


def random_image_bytes(rng, width, height, fmt='JPEG'):
  pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format=fmt)
  return buf.getvalue()


def network_inputs(arch, rng, sizes, modes):
  """Random images through the host-side preparation and the device-side padding."""
  batch = [letterbox.prepare(random_image_bytes(rng, w, h, 'PNG'), (arch.width, arch.height), m)
           for (w, h), m in zip(sizes, modes)]
  stack = {k: np.stack([b[k] for b in batch]) for k in batch[0]}
  x = np.asarray(detection.network_input(stack['image'], stack['region']))
  return x, stack


def opencv_heads(cfg, weights, arch, x):
  cv2 = pytest.importorskip('cv2')   # opencv-python-headless<5 (5.0 dropped the Darknet importer)
  net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
  net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
  net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
  # OpenCV names a layer's conv `conv_<index>`, as the cfg counts layers.
  names = [f'conv_{h.conv_layer}' for h in arch.heads()]
  net.setInput(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  return [o.transpose(0, 2, 3, 1) for o in net.forward(names)]


def our_heads(weights, cfg, x):
  loaded = darknet.load(weights, cfg)
  model = yolo.YOLOv3(loaded.arch)
  heads, aux = jax.jit(lambda p, x: model.apply({'params': p}, x))(loaded.params, x)
  return [np.asarray(h) for h in heads], aux, loaded


def assert_relative(ours, ref, rtol=1e-4):
  """|ours - ref| <= rtol · max|ref| everywhere (per-element relative error is meaningless
  for outputs near zero)."""
  scale = np.abs(ref).max()
  assert scale > 0
  err = np.abs(ours - ref).max() / scale
  assert err <= rtol, f'max error {err:.2e} of max |ref| {scale:.3g}'


# ------------------------------------------------------------------------------ cfg

def test_yolov3_architecture_and_its_cfg_round_trip():
  arch = yolo.yolov3()
  assert len(arch.layers) == 107
  assert sum(isinstance(l, yolo.Conv) for l in arch.layers) == 75
  heads = arch.heads()
  assert [(h.layer, h.conv_layer, h.stride) for h in heads] == [(82, 81, 32), (94, 93, 16),
                                                                 (106, 105, 8)]
  assert [h.anchors for h in heads] == [((116, 90), (156, 198), (373, 326)),
                                        ((30, 61), (62, 45), (59, 119)),
                                        ((10, 13), (16, 30), (33, 23))]
  shapes = arch.shapes()
  assert [shapes[h.conv_layer] for h in heads] == [(13, 13, 255), (26, 26, 255), (52, 52, 255)]
  # The float count of the released yolov3.weights: (248007048 - 20) / 4.
  assert darknet.expected_floats(arch) == 62001757
  text = darknet.write_cfg(arch)
  assert darknet.parse_cfg_text(text) == arch
  assert darknet.parse_cfg_text(darknet.write_cfg(tiny_arch())) == tiny_arch()


def test_cfg_parser_accepts_darknet_spelling_and_training_options():
  # As Darknet's own yolov3.cfg is written: commented test settings, training options,
  # spaces around '=', and 608 px (our tools run at --detector_size, 416 by default).
  text = darknet.write_cfg(tiny_arch()).replace('width=96\nheight=64', 'width=608\nheight=608')
  text = text.replace('[net]', '[net]\n# Testing\n# batch=1\n# Training\nbatch=64\n'
                               'subdivisions=16\nlearning_rate=0.001\nburn_in=1000\n'
                               'max_batches = 500200\npolicy=steps\nsteps=400000,450000\n'
                               'scales=.1,.1\nmomentum = 0.9\ndecay=0.0005\nangle=0\n'
                               'saturation = 1.5\nexposure = 1.5\nhue=.1', 1)
  text = text.replace('batch=1\nsubdivisions=1\n', '', 1)
  text = text.replace('[yolo]', '[yolo]\njitter=.3\nignore_thresh = .7\ntruth_thresh = 1\n'
                                'random=1', 1)
  text = text.replace('layers=-1, 7', 'layers = -1,7').replace('[shortcut]', '[shortcut]\nalpha=1')
  assert darknet.parse_cfg_text(text) == tiny_arch(width=608, height=608)


# ------------------------------------------------------------------------------ loader errors

def _cfg_with(tmp_path, text):
  path = tmp_path / 'bad.cfg'
  path.write_text(text)
  return path


def _line_of(text, needle, start=0):
  return text[:text.index(needle, start)].count('\n') + 1


def test_unsupported_layer_option_and_value_are_named_with_their_line(tmp_path):
  text = darknet.write_cfg(tiny_arch())
  bad = text.replace('# layer 5\n', '# layer 5\n[maxpool]\nsize=2\nstride=2\n\n')
  with pytest.raises(darknet.UnsupportedLayerError) as e:
    darknet.parse_cfg(_cfg_with(tmp_path, bad))
  assert e.value.line == _line_of(bad, '[maxpool]')
  assert f'bad.cfg:{e.value.line}: layer [maxpool] (layer 5) is not supported' in str(e.value)
  bad = text.replace('activation=leaky', 'activation=mish', 1)
  with pytest.raises(darknet.UnsupportedOptionError,
                     match=r'activation=mish .*only leaky and linear') as e:
    darknet.parse_cfg_text(bad, 'x.cfg')
  assert e.value.line == _line_of(bad, 'activation=mish')
  bad = text.replace('[yolo]', '[yolo]\nscale_x_y=1.05', 1)
  with pytest.raises(darknet.UnsupportedOptionError,
                     match=r"x\.cfg:\d+: option 'scale_x_y' of \[yolo\] \(layer 11\)"):
    darknet.parse_cfg_text(bad, 'x.cfg')
  bad = text.replace('[convolutional]', '[convolutional]\ngroups=2', 1)
  with pytest.raises(darknet.UnsupportedOptionError, match=r'groups=2 .*only groups=1'):
    darknet.parse_cfg_text(bad, 'x.cfg')
  # Darknet's default activation for a conv without one is logistic: refused, and said so.
  bad = text.replace('activation=leaky\n', '', 1)
  with pytest.raises(darknet.UnsupportedOptionError,
                     match='default when none is given is logistic'):
    darknet.parse_cfg_text(bad, 'x.cfg')
  with pytest.raises(darknet.CfgError, match=r"x\.cfg:\d+: \[route\] layer 15: refers to layer 40"):
    darknet.parse_cfg_text(text.replace('layers=-1, 7', 'layers=-1, 40'), 'x.cfg')


def test_filters_that_do_not_match_the_classes_are_named(tmp_path):
  text = darknet.write_cfg(tiny_arch(classes=3))        # filters = 3 * (5 + 3) = 24
  bad = text.replace('classes=3', 'classes=80')
  with pytest.raises(darknet.FiltersMismatchError) as e:
    darknet.parse_cfg(_cfg_with(tmp_path, bad))
  msg = str(e.value)
  assert 'layer 10 has filters=24' in msg and '(5 + classes=80) = 255' in msg
  assert 'set filters=255' in msg
  assert e.value.line == _line_of(bad, 'filters=24')


def test_truncated_and_over_long_weights_fail_with_expected_and_found_counts(tmp_path):
  arch = tiny_arch()
  cfg, weights = write_files(tmp_path, arch)
  data = weights.read_bytes()
  expected = darknet.expected_floats(arch)
  assert len(data) == 20 + 4 * expected
  short = tmp_path / 'short.weights'
  short.write_bytes(data[:-40])
  with pytest.raises(darknet.WeightsSizeError) as e:
    darknet.load(short, cfg)
  assert (e.value.expected, e.value.found) == (expected, expected - 10)
  msg = str(e.value)
  assert f'exactly {expected} float32' in msg and f'found {expected - 10}' in msg
  assert 'truncated (10 floats missing)' in msg and 'ends inside layer 17 (conv_17' in msg
  long = tmp_path / 'long.weights'
  long.write_bytes(data + b'\0' * 12)
  with pytest.raises(darknet.WeightsSizeError, match=f'found {expected + 3}: 3 floats too many'):
    darknet.load(long, cfg)
  odd = tmp_path / 'odd.weights'
  odd.write_bytes(data + b'\0')
  with pytest.raises(darknet.WeightsSizeError, match='not a whole number of floats'):
    darknet.load(odd, cfg)
  # Weights of another class count: the same error, both counts named.
  with pytest.raises(darknet.WeightsSizeError, match='3 classes'):
    darknet.load(write_files(tmp_path, tiny_arch(classes=1), name='one')[1], cfg)
  with pytest.raises(FileNotFoundError, match='nothing is downloaded'):
    darknet.load(tmp_path / 'missing.weights', cfg)


@pytest.mark.parametrize('version,header', [((0, 2, 0), 20), ((0, 1, 0), 16), ((1, 0, 0), 20)])
def test_weights_header_seen_width_depends_on_the_version(tmp_path, version, header):
  arch = tiny_arch()
  cfg, weights = write_files(tmp_path, arch, version=version)
  data = weights.read_bytes()
  assert len(data) == header + 4 * darknet.expected_floats(arch)
  assert struct.unpack('<3i', data[:12]) == version
  layers, head = darknet.read_darknet_weights(weights, arch)
  assert (head.major, head.minor, head.revision, head.seen, head.size) == (*version, 123456, header)
  ref = darknet.random_darknet_weights(arch, 0)
  for i, w in ref.items():
    np.testing.assert_array_equal(layers[i].weights, w.weights)
    np.testing.assert_array_equal(layers[i].bias, w.bias)
  # OpenCV reads the same header rule: with a wrong seen width its output would be shifted.
  rng = np.random.default_rng(1)
  x, _ = network_inputs(arch, rng, [(50, 40)], ['letterbox'])
  for ours, ref in zip(our_heads(weights, cfg, x)[0], opencv_heads(cfg, weights, arch, x)):
    assert_relative(ours, ref)


def test_batch_norm_is_folded_as_darknet_normalises():
  arch = yolo.Architecture(8, 8, 3, (Y.Conv(4, 3), Y.Conv(3 * 6, 1, batch_normalize=False,
                                                           activation='linear'),
                                     Y.Yolo((0, 1, 2), yolo.COCO_ANCHORS[:3], 1)))
  raw = darknet.random_darknet_weights(arch, 3)
  params = darknet.to_params(arch, raw)
  x = np.random.default_rng(0).uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)
  y = np.asarray(jax.lax.conv_general_dilated(x, params['conv_0']['kernel'], (1, 1),
                                              ((1, 1), (1, 1)),
                                              dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
                 ) + params['conv_0']['bias']
  w = raw[0]
  # Unfolded: plain conv, then (x - mean) / (sqrt(var) + 1e-6) * scale + bias.
  plain = np.asarray(jax.lax.conv_general_dilated(
      x, w.weights.transpose(2, 3, 1, 0), (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  ref = (plain - w.mean) / (np.sqrt(w.variance) + 1e-6) * w.scale + w.bias
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ parity

def test_tiny_network_matches_opencv_through_both_preprocessing_modes(tmp_path):
  arch = tiny_arch()
  cfg, weights = write_files(tmp_path, arch, seed=5)
  rng = np.random.default_rng(0)
  sizes = [(150, 100), (70, 120), (96, 64), (33, 47)]
  modes = ['letterbox', 'squash', 'letterbox', 'squash']
  x, host = network_inputs(arch, rng, sizes, modes)
  ours, aux, loaded = our_heads(weights, cfg, x)
  ref = opencv_heads(cfg, weights, arch, x)
  assert [o.shape for o in ours] == [(4, 2, 3, 24), (4, 4, 6, 24)]
  for o, r in zip(ours, ref):
    assert_relative(o, r)
  # Outputs read by shortcuts and routes: 1 (shortcut at 4), 9 (route at 12), 14 and 7.
  assert set(aux) == {'layer_1', 'layer_7', 'layer_9', 'layer_14'}
  assert aux['layer_7'].shape == (4, 4, 6, 32)
  assert loaded.header.seen == 123456


def test_full_yolov3_layout_matches_opencv(tmp_path):
  arch = yolo.yolov3()
  cfg, weights = write_files(tmp_path, arch, seed=1)
  rng = np.random.default_rng(2)
  x, _ = network_inputs(arch, rng, [(500, 375), (300, 420)], ['letterbox', 'squash'])
  ours, _, _ = our_heads(weights, cfg, x)
  ref = opencv_heads(cfg, weights, arch, x)
  assert [o.shape for o in ours] == [(2, 13, 13, 255), (2, 26, 26, 255), (2, 52, 52, 255)]
  for o, r in zip(ours, ref):
    assert_relative(o, r)


# ------------------------------------------------------------------------------ preprocessing

def test_letterbox_geometry_is_darknets():
  # Darknet: the limiting side becomes the net size, the other (side * net) // side, centred.
  assert letterbox.letterbox_region(500, 375, 416, 416) == (0, 52, 416, 312)
  assert letterbox.letterbox_region(375, 500, 416, 416) == (52, 0, 312, 416)
  assert letterbox.letterbox_region(416, 416, 416, 416) == (0, 0, 416, 416)
  assert letterbox.letterbox_region(1001, 333, 416, 416) == (0, 139, 416, 138)
  assert letterbox.letterbox_region(10, 20, 96, 64) == (32, 0, 32, 64)
  assert letterbox.region_of('squash', 500, 375, 416, 416) == (0, 0, 416, 416)
  with pytest.raises(ValueError, match='unknown detector input mode'):
    letterbox.region_of('crop', 5, 5, 416, 416)


def test_letterbox_and_squash_pixels_and_grey_padding():
  rng = np.random.default_rng(0)
  data = random_image_bytes(rng, 80, 40, 'PNG')
  src = np.asarray(Image.open(io.BytesIO(data)))
  lb = letterbox.prepare(data, (96, 64), 'letterbox')
  assert lb['image'].shape == (64, 96, 3) and lb['image'].dtype == np.uint8
  x0, y0, w, h = lb['region']
  assert (x0, y0, w, h) == (0, 8, 96, 48) and tuple(lb['size']) == (80, 40)
  expect = np.asarray(Image.fromarray(src).resize((96, 48), Image.BILINEAR))
  np.testing.assert_array_equal(lb['image'][8:56], expect)
  x = np.asarray(detection.network_input(lb['image'][None], lb['region'][None]))[0]
  assert (x[:8] == 0.5).all() and (x[56:] == 0.5).all()        # Darknet's grey, exactly
  np.testing.assert_allclose(x[8:56], expect / 255.0, rtol=0, atol=1e-7)
  sq = letterbox.prepare(data, (96, 64), 'squash')
  np.testing.assert_array_equal(sq['image'], np.asarray(Image.fromarray(src).resize(
      (96, 64), Image.BILINEAR)))
  assert tuple(sq['region']) == (0, 0, 96, 64)
  # Large JPEGs are decoded reduced, never below the size they are resized to.
  big = random_image_bytes(rng, 1600, 1200)
  img, size = letterbox.decode(big, (416, 312))
  assert size == (1600, 1200) and img.size == (800, 600)
  assert letterbox.prepare(big, (416, 416))['image'].shape == (416, 416, 3)


def test_unreadable_images_become_grey_and_not_ok(tmp_path):
  (tmp_path / 'bad.jpg').write_bytes(b'not an image')
  t = letterbox.DetectorInput(96, 64)
  out = t((7, str(tmp_path / 'bad.jpg')))
  assert not out['ok'] and out['index'] == 7 and (out['image'] == letterbox.CANVAS_FILL).all()
  assert not t((8, str(tmp_path / 'missing.jpg')))['ok']


def test_boxes_map_back_to_original_pixels_in_both_modes():
  for mode, (w, h) in [('letterbox', (500, 375)), ('letterbox', (300, 420)),
                       ('squash', (500, 375))]:
    region = np.asarray(letterbox.region_of(mode, w, h, 416, 416), np.int32)
    orig = np.asarray([[50, 30, 200, 300], [0, 0, w, h]], np.float32)
    sx, sy = region[2] / w, region[3] / h
    net = orig * [sx, sy, sx, sy] + [region[0], region[1]] * 2
    back = np.asarray(detection.to_original(net[None], region[None],
                                            np.asarray([[w, h]], np.int32)))[0]
    np.testing.assert_allclose(back, orig, rtol=1e-5, atol=1e-3)
  # Boxes reaching into the padding or past the border are clipped to the image.
  region = np.asarray([[0, 52, 416, 312]], np.int32)
  out = np.asarray(detection.to_original(np.asarray([[[-10, 20, 430, 400]]], np.float32),
                                         region, np.asarray([[500, 375]], np.int32)))
  np.testing.assert_allclose(out[0, 0], [0, 0, 500, 375])


# ------------------------------------------------------------------------------ decoding

def _sigmoid(v):
  return 1 / (1 + np.exp(-np.float64(v)))


def ref_decode(raws, anchors, width, height):
  """Darknet's get_yolo_detections, one image, one candidate at a time (float64)."""
  boxes, scores = [], []
  for raw, anc in zip(raws, anchors):
    gh, gw, ch = raw.shape
    a_n = len(anc)
    k = ch // a_n
    for row in range(gh):
      for col in range(gw):
        for a in range(a_n):
          t = raw[row, col, a * k:(a + 1) * k]
          cx = (col + _sigmoid(t[0])) / gw * width
          cy = (row + _sigmoid(t[1])) / gh * height
          bw, bh = np.exp(np.float64(t[2])) * anc[a][0], np.exp(np.float64(t[3])) * anc[a][1]
          boxes.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
          scores.append(_sigmoid(t[4]) * _sigmoid(t[5:]))
  return np.asarray(boxes), np.asarray(scores)


def ref_iou(a, b):
  """Darknet's box_iou on centre/size boxes."""
  def overlap(c1, w1, c2, w2):
    return min(c1 + w1 / 2, c2 + w2 / 2) - max(c1 - w1 / 2, c2 - w2 / 2)
  ca = [(a[0] + a[2]) / 2, (a[1] + a[3]) / 2, a[2] - a[0], a[3] - a[1]]
  cb = [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]]
  w, h = overlap(ca[0], ca[2], cb[0], cb[2]), overlap(ca[1], ca[3], cb[1], cb[3])
  inter = 0.0 if w < 0 or h < 0 else w * h
  union = ca[2] * ca[3] + cb[2] * cb[3] - inter
  return inter / union if union > 0 else 0.0


def ref_nms(boxes, scores, thr, iou_thr, max_boxes):
  """Sort all (box, class) candidates by confidence (ties: lower index first), keep each that
  no kept one of its class overlaps by more than iou_thr."""
  n, c = scores.shape
  cands = sorted(((float(scores[i, k]), i * c + k) for i in range(n) for k in range(c)
                  if scores[i, k] >= thr), key=lambda t: (-t[0], t[1]))
  kept = []
  for s, idx in cands:
    i, k = divmod(idx, c)
    if all(not (kk == k and ref_iou(boxes[ki], boxes[i]) > iou_thr) for _, ki, kk in kept):
      kept.append((s, i, k))
  return kept[:max_boxes], len(kept) > max_boxes


_NMS = jax.jit(detection.nms, static_argnames=('score_threshold', 'iou_threshold', 'max_boxes',
                                               'pre_nms_top_k'))
PAD_TO = 64   # candidates padded (score 0, after the real ones) so cases share compilations


def run_nms(boxes, scores, thr=0.5, iou_thr=0.4, max_boxes=5, **kw):
  boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
  n = len(boxes)
  boxes = np.concatenate([boxes, np.zeros((PAD_TO - n, 4), np.float32)])
  scores = np.concatenate([scores, np.zeros((PAD_TO - n, scores.shape[1]), np.float32)])
  det = _NMS(jnp.asarray(boxes)[None], jnp.asarray(scores)[None], score_threshold=thr,
             iou_threshold=iou_thr, max_boxes=max_boxes, **kw)
  return jax.tree.map(lambda v: np.asarray(v)[0], det)


def check_against_reference(boxes, scores, thr=0.5, iou_thr=0.4, max_boxes=5, **kw):
  boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
  det = run_nms(boxes, scores, thr, iou_thr, max_boxes, **kw)
  kept, more = ref_nms(boxes, scores, thr, iou_thr, max_boxes)
  assert int(det.count) == len(kept)
  assert bool(det.more) == more
  for slot, (s, i, k) in enumerate(kept):
    assert det.scores[slot] == np.float32(s) and det.classes[slot] == k
    np.testing.assert_array_equal(det.boxes[slot], boxes[i])
  assert (det.classes[len(kept):] == -1).all() and (det.scores[len(kept):] == 0).all()
  assert (det.boxes[len(kept):] == 0).all()
  return det


def test_decode_matches_the_numpy_reference():
  arch = tiny_arch()
  rng = np.random.default_rng(0)
  shapes = arch.shapes()
  raws = [rng.normal(0, 2, (2, *shapes[h.conv_layer])).astype(np.float32) for h in arch.heads()]
  anchors = [h.anchors for h in arch.heads()]
  boxes, scores = detection.decode([jnp.asarray(r) for r in raws], anchors, (96, 64))
  assert boxes.shape == (2, (2 * 3 + 4 * 6) * 3, 4) and scores.shape == (2, 90, CLASSES)
  for b in range(2):
    ref_boxes, ref_scores = ref_decode([r[b] for r in raws], anchors, 96, 64)
    np.testing.assert_allclose(np.asarray(boxes[b]), ref_boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(scores[b]), ref_scores, rtol=1e-5, atol=1e-7)


def test_nms_one_class_overlapping_boxes():
  boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9], [21, 20, 31, 30],
           [50, 50, 60, 60]]
  scores = [[0.9], [0.95], [0.7], [0.8], [0.6], [0.4]]
  det = check_against_reference(boxes, scores)
  assert int(det.count) == 2      # 1 wins its cluster, 2 its own; 5 is under the threshold
  # IoU exactly at the threshold is not suppressed (Darknet: > thresh).
  det = check_against_reference([[0, 0, 10, 10], [0, 0, 10, 4]], [[0.9], [0.8]], iou_thr=0.4)
  assert int(det.count) == 2


def test_nms_is_per_class():
  boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11], [30, 30, 40, 40]]
  scores = [[0.9, 0.1], [0.2, 0.85], [0.8, 0.7], [0.0, 0.6]]
  det = check_against_reference(boxes, scores)
  # Class 0 keeps box 0; class 1 keeps box 1 (it overlaps box 0, but of another class) and 3.
  assert [(int(c), float(s)) for c, s in zip(det.classes[:3], det.scores[:3])] == [
      (0, np.float32(0.9)), (1, np.float32(0.85)), (1, np.float32(0.6))]


def test_nms_exact_score_ties_go_to_the_lower_index():
  boxes = [[5, 5, 15, 15], [0, 0, 10, 10], [6, 6, 16, 16], [40, 40, 50, 50]]
  scores = [[0.75, 0.75], [0.9, 0.75], [0.75, 0.9], [0.75, 0.75]]
  det = check_against_reference(boxes, scores, max_boxes=8)
  # The 0.9s first (box 1 class 0 before box 2 class 1), then the 0.75s in index order.
  assert [int(c) for c in det.classes[:6]] == [0, 1, 0, 1, 0, 1]
  np.testing.assert_array_equal(det.boxes[:3], np.float32([[0, 0, 10, 10], [6, 6, 16, 16],
                                                           [5, 5, 15, 15]]))
  # Pre-selection of the best 5 of the 8 candidates keeps the same (stable) order.
  det_k = run_nms(boxes, scores, max_boxes=8, pre_nms_top_k=5)
  assert int(det_k.count) == 4 and bool(det_k.more)
  np.testing.assert_array_equal(det_k.boxes[:4], det.boxes[:4])


def test_nms_boxes_at_the_image_border():
  # Boxes that reach past the border overlap as they are (Darknet clips only for drawing)...
  boxes = [[-20, -10, 30, 40], [-10, -10, 30, 40], [80, 50, 120, 90], [90, 60, 130, 95]]
  scores = [[0.9], [0.8], [0.85], [0.6]]
  det = check_against_reference(boxes, scores)
  # ...and are clipped to the image when mapped back.
  out = detection.postprocess(
      [jnp.zeros((1, 1, 1, 6))], [((1, 1),)], (100, 80), jnp.asarray([[0, 0, 100, 80]]),
      jnp.asarray([[100, 80]]), score_threshold=0.5, iou_threshold=0.4, max_boxes=2)
  assert int(out.count[0]) == 0
  mapped = np.asarray(detection.to_original(jnp.asarray(det.boxes[None]),
                                            jnp.asarray([[0, 0, 100, 80]]),
                                            jnp.asarray([[100, 80]])))[0]
  np.testing.assert_allclose(mapped[:2], [[0, 0, 30, 40], [80, 50, 100, 80]])


def test_nms_nothing_above_the_threshold():
  det = check_against_reference([[0, 0, 5, 5], [1, 1, 6, 6]], [[0.3, 0.49], [0.1, 0.2]])
  assert int(det.count) == 0 and not det.more


def test_nms_more_candidates_than_the_maximum():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 400, (40, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (40, 2))], 1)
  scores = rng.uniform(0.3, 1.0, (40, 2))
  det = check_against_reference(boxes, scores, max_boxes=6)
  assert int(det.count) == 6 and det.more
  det = check_against_reference(boxes, scores, max_boxes=200)
  assert not det.more
  # Pre-selection gives the same best boxes while enough survive it.
  check_against_reference(boxes, scores, max_boxes=6, pre_nms_top_k=40)


def test_nms_random_cases_match_the_reference():
  rng = np.random.default_rng(1)
  for _ in range(5):
    n = int(rng.integers(1, 30))
    xy = rng.uniform(0, 100, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 50, (n, 2))], 1)
    scores = np.round(rng.uniform(0, 1, (n, 3)), 1)      # rounded: many exact ties
    check_against_reference(boxes, scores, thr=0.3, iou_thr=0.45, max_boxes=10)


def test_postprocess_is_jitted_once_per_shape_and_keeps_class_ids():
  arch = tiny_arch()
  shapes = arch.shapes()
  rng = np.random.default_rng(3)
  anchors = [h.anchors for h in arch.heads()]
  traces = []

  @jax.jit
  def run(raws, region, size):
    traces.append(1)
    return detection.postprocess(raws, anchors, (96, 64), region, size, score_threshold=0.3,
                                 iou_threshold=0.4, max_boxes=4, classes=(2,))
  for seed in range(3):
    raws = [jnp.asarray(rng.normal(0, 2, (2, *shapes[h.conv_layer])), jnp.float32)
            for h in arch.heads()]
    det = run(raws, jnp.asarray([[0, 8, 96, 48]] * 2), jnp.asarray([[200, 100]] * 2))
  assert len(traces) == 1
  count = np.asarray(det.count)
  assert (count > 0).any()
  cls = np.asarray(det.classes)
  for b in range(2):
    assert (cls[b, :count[b]] == 2).all() and (cls[b, count[b]:] == -1).all()
    boxes = np.asarray(det.boxes)[b, :count[b]]
    assert (boxes >= 0).all()
    assert (boxes[:, [0, 2]] <= 200).all() and (boxes[:, [1, 3]] <= 100).all()

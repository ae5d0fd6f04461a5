r"""Person detector speed: images/s of the jitted YOLOv3 and of the whole prepare-time pass.

Two figures, at 416 px and batch 32 by default, on the default JAX device:

  network   the jitted detector alone (network + decoding + person NMS + mapping back) on a
            batch already on the device: what the accelerator can do.
  pass      `tools.detect.run_detection` over N generated 500×375 JPEGs (EmoSet's typical
            geometry, drawn by `uniemox_jax.data.demo`): reading, decoding and letterboxing
            on host threads (Grain), the device, the chunk files and the boxes file — what
            `prepare --person_boxes=yolov3` runs, compilation excluded.

The weights are random (YOLOv3's layout, written in the Darknet format and read back by our
loader) unless `--weights` names real ones: the speed is the same. Prints one JSON line on
stdout (fields: device, platform, batch, size, dtype, network_images_per_s,
network_ms_per_batch, pass_images_per_s, pass_images, compile_s, load_avg_before) and a
readable line on stderr.

  .venv312/bin/python benchmarks/detect.py                       # ~3–4 min on 2 CPU cores
  python benchmarks/detect.py --batch=64 --images=2048           # on a GPU

Measured figures are in the README ("Person boxes from the built-in detector").
"""
from __future__ import annotations

import io
import json
import os
import platform
import sys
import tempfile
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # `python benchmarks/detect.py` from anywhere
  sys.path.insert(0, _REPO)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

_BATCH = flags.DEFINE_integer('batch', 32, 'Images per detector call.')
_SIZE = flags.DEFINE_integer('size', 416, 'Network input size (a multiple of 32).')
_IMAGES = flags.DEFINE_integer('images', 96, 'Generated JPEGs for the whole-pass figure.')
_WIDTH = flags.DEFINE_integer('width', 500, 'Generated image width.')
_HEIGHT = flags.DEFINE_integer('height', 375, 'Generated image height.')
_ITERS = flags.DEFINE_integer('iters', 3, 'Timed network calls (after one untimed).')
_MODE = flags.DEFINE_enum('mode', 'letterbox', ['letterbox', 'squash'], 'Input preparation.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_WEIGHTS = flags.DEFINE_string('weights', None, 'Darknet .weights (default: random).')
_CFG = flags.DEFINE_string('cfg', None, 'Darknet cfg (default: our YOLOv3).')
_READ_THREADS = flags.DEFINE_integer('read_threads', None, 'Grain read threads (default: '
                                     "the pipeline's).")


def _jpegs(root: str, n: int, size: tuple[int, int]) -> list:
  from uniemox_jax.data import demo
  from uniemox_jax.tools import detect
  refs = []
  rng = np.random.default_rng(0)
  for i in range(n):
    img, _ = demo.draw_image(i % 8, rng, size, person=bool(i % 4))
    path = os.path.join(root, f'img_{i:05d}.jpg')
    buf = io.BytesIO()
    img.convert('RGB').save(buf, format='JPEG', quality=90)
    with open(path, 'wb') as f:
      f.write(buf.getvalue())
    refs.append(detect.ImageRef(f'img_{i:05d}', path))
  return refs


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  from uniemox_jax.models import yolo
  from uniemox_jax.tools import detect
  from uniemox_jax.weights import darknet

  load_before = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
  batch, size = _BATCH.value, _SIZE.value
  with tempfile.TemporaryDirectory(prefix='detect_bench_') as tmp:
    weights, cfg = _WEIGHTS.value, _CFG.value
    if weights is None:
      arch = darknet.parse_cfg(cfg) if cfg else yolo.yolov3()
      weights = os.path.join(tmp, 'random.weights')
      darknet.write_darknet_weights(weights, arch, darknet.random_darknet_weights(arch, 0))
    loaded = darknet.load(weights, cfg, size=size)
    dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[_DTYPE.value]
    detector = detect.PersonDetector(loaded.arch, loaded.params, mode=_MODE.value, dtype=dtype)

    # The network alone, on a batch already on the device.
    rng = np.random.default_rng(0)
    host = {'image': rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
            'region': np.tile(np.asarray([[0, 52 * size // 416, size, 312 * size // 416]],
                                         np.int32), (batch, 1)),
            'size': np.tile(np.asarray([[500, 375]], np.int32), (batch, 1))}
    dev = jax.device_put(host)
    t0 = time.perf_counter()
    jax.block_until_ready(detector(dev['image'], dev['region'], dev['size']))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(_ITERS.value):
      out = detector(dev['image'], dev['region'], dev['size'])
    jax.block_until_ready(out)
    net_s = (time.perf_counter() - t0) / _ITERS.value

    # The whole pass: files → Grain (decode + letterbox) → device → chunks → boxes file.
    refs = _jpegs(tmp, _IMAGES.value, (_WIDTH.value, _HEIGHT.value))
    t0 = time.perf_counter()
    detect.run_detection(refs, os.path.join(tmp, 'boxes.json'), detector, batch=batch,
                         read_threads=_READ_THREADS.value, desc='benchmark pass')
    pass_s = time.perf_counter() - t0

  device = jax.devices()[0]
  row = {
      'device': getattr(device, 'device_kind', str(device)), 'platform': device.platform,
      'devices': jax.device_count(), 'host_cpus': os.cpu_count(),
      'batch': batch, 'size': size, 'mode': _MODE.value, 'dtype': _DTYPE.value,
      'network_images_per_s': round(batch / net_s, 2),
      'network_ms_per_batch': round(1000 * net_s, 1),
      'pass_images_per_s': round(_IMAGES.value / pass_s, 2), 'pass_images': _IMAGES.value,
      'pass_image_size': [_WIDTH.value, _HEIGHT.value],
      'compile_s': round(compile_s, 1),
      'load_avg_before': None if load_before is None else round(load_before, 2),
      'python': platform.python_version(), 'jax': jax.__version__,
  }
  print(json.dumps(row), flush=True)
  sys.stderr.write(
      f'YOLOv3 {size} px, batch {batch}, {row["device"]}: network {row["network_images_per_s"]} '
      f'img/s ({row["network_ms_per_batch"]} ms/batch), whole pass {row["pass_images_per_s"]} '
      f'img/s over {_IMAGES.value} JPEGs of {_WIDTH.value}x{_HEIGHT.value}; compile '
      f'{row["compile_s"]} s; load average before {row["load_avg_before"]}\n')


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  app.run(main)

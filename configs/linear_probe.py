r"""Linear probe: a linear classifier on frozen encoder features.

The encoder (from a UniEmoX pre-training workdir/checkpoint or an MAE/UniEmoX .pth) is run once
over train/val/test with the evaluation transform (resize 256, centre crop 224); features are
the mean of the patch tokens (or the CLS token) after the encoder's final norm, standardised
with the training set's statistics (MAE's parameter-free BatchNorm in front of the head). A
linear head is then trained on the cached features with AdamW; the epoch with the best val
top-1 is evaluated on test → `<workdir>/results.json`.

Launch:

  python main.py --config=configs/linear_probe.py:emo8 --workdir=$WORKDIR \
      --config.data.data_dir=$TFDS_DIR --config.init=$PRETRAIN_WORKDIR

Minutes on one GPU once features are extracted (the extraction is one forward pass per image;
the features are cached in `<workdir>/features/`, keyed by the weights and the data, so a
pre-empted or repeated probe does not extract again). What to expect: `results.json` with
val/test top-1 and top-3 of the best val epoch, `eval/test_best.{json,png}` (confusion
matrix), per-epoch loss, lr and val accuracy in `metrics.jsonl` and TensorBoard. No paper
numbers for linear probing exist to compare with.
Arguments: `<dataset>` (emo8, fi, emotion6, unbiasedemo, caer_s, heco), `variant=...`,
`pool=mean|cls`, `demo`.

Demo (after `bash demo.sh`; seconds, test top-1 1.000 here):
  python main.py --config=configs/linear_probe.py:demo --workdir=demo_out/probe
"""
import ml_collections

from configs import common
from configs.finetune import NUM_CLASSES


def get_config(arg=None):
  first = (arg or "").split(",")[0]
  dataset = first if first and "=" not in first and first != "demo" else ""
  rest = ",".join((arg or "").split(",")[1:]) if dataset else arg
  args = common.parse_arg(rest, variant="L/16", pool="mean", demo=False)
  dataset = dataset or "emo8"
  if dataset not in NUM_CLASSES:
    raise common.ConfigArgumentError(
        f"unknown linear-probe dataset {dataset!r}"
        f"{common.did_you_mean(dataset, [*NUM_CLASSES, 'demo'])}; choose one of "
        f"{', '.join(sorted(NUM_CLASSES))} (or 'demo'), e.g. configs/linear_probe.py:emo8")

  config = common.base_config()
  config.task = "linear_probe"
  config.batch_size = 256            # head training batch (features are cached)
  config.total_epochs = 90
  config.warmup_epochs = 5
  config.model = ml_collections.ConfigDict(dict(
      variant=args.variant, image_size=224,
      patch_size=common.variant_default(),   # None: the variant's
      num_classes=NUM_CLASSES[dataset],
      pool=args.pool, dtype="bfloat16", attention_impl="explicit"))
  config.data = ml_collections.ConfigDict(dict(
      name=f"emotion_folder/{dataset}", data_dir="", train_split="train", val_split="val",
      test_split="test", eval_resize=256, num_workers=8, read_threads=0, prefetch=2))
  # AdamW on standardised features. (MAE's linear probe uses LARS at base lr 0.1; that number
  # is far too large for AdamW, whose steps do not shrink with the gradient.)
  config.optim = common.optim_config(base_lr=1e-3, b2=0.999, weight_decay=0.0)
  config.eval = ml_collections.ConfigDict(dict(every_epochs=1, batch_size=256))
  config.checkpoint = common.checkpoint_config(every_steps=0, keep=1)
  if args.demo:
    common.demo_base(config, batch_size=64, total_epochs=60)
    config.data.eval_resize = 73
    config.optim.lr = 3e-3
    config.eval.batch_size = 64
    config.init = f"{common.DEMO_DIR}/pretrain"
  return config

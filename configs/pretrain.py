r"""UniEmoX pre-training (docs/method.md §1, §4).

The paper's recipe: ViT-L/16 student initialised from ImageNet MAE weights, EmoSet-118K
train+val, frozen CLIP ViT-B/16 teacher (image and text), L = L_con + L_sim + L_rec,
AdamW (0.9, 0.95), wd 0.05, lr 1e-3 × batch/256, 40 warm-up epochs then cosine, 200 epochs.

Launch (paths: README "Real data and weights"):

  python main.py --config=configs/pretrain.py --workdir=$WORKDIR \
      --config.data.data_dir=$TFDS_DIR --config.teacher.path=$CLIP_DIR \
      --config.init=$MAE_CKPT

What to expect: the log prints the loss terms (L_con, L_sim, L_rec), lr, norms, images/s and
ETA every 50 steps. Cost: about 0.25 TFLOP per image per step for L/16 with the B/16 teacher
(mask 0.75, analytic count of benchmarks/pretrain_step.py), so ~25 PFLOP per epoch of
EmoSet train+val (~100K images); measure your hardware's step time with that benchmark. On
the demo, L_rec falls from ~1.6 to ~0.38, L_sim from ~1.0 to ~0.05 and L_con from ~0.4 to
~0.01 in 280 steps. No paper accuracy could be verified here (docs/method.md §0).

Arguments (after a colon, comma-separated):
  variant=B/16|L/16|H/14   student size                      (default L/16)
  mask_ratio=0.75          fraction of patches removed        (released code: 0.9)
  components=con+sim+rec   the loss ablation grid: which of L_con, L_sim, L_rec (and 'nce',
                           the optional symmetric InfoNCE) are on, joined by '+'
  nofusion                 the scene token alone (γ = α; no person view)
  decoder_output=patches|cls_broadcast       docs/method.md §3 #1
  person_view=detector_crop|second_view      docs/method.md §3 #2
  teacher_norm=clip|imagenet                 docs/method.md §3 #3
  relation_scope=global|local                docs/method.md §3 #4
  released                 all four switches as in the released code, mask ratio 0.9
  demo                     the embedded demo: tiny model, generated data, tiny random teacher
                           (`bash demo.sh` prepares them; minutes on a 2-core CPU)

Demo: python main.py --config=configs/pretrain.py:demo --workdir=demo_out/pretrain

In-training evaluation (off by default): `--config.eval.every_steps=N` runs a kNN read-out
(and with `--config.eval.zeroshot=True` the zero-shot γ read-out) on a fixed held-out subset
of a labelled data set every N steps and at the end, logged as `val/knn_top1`, ... to
metrics.jsonl and TensorBoard with its cost (`val/eval_seconds`, `val/eval_cost_steps`: the
evaluation's time in training steps). Keys: `config.eval.*` below; README "Evaluation".
"""
import ml_collections

from configs import common
from configs.readout import CAPTION_TEMPLATE


def get_config(arg=None):
  args = common.parse_arg(
      arg, variant="L/16", mask_ratio=0.75, components="con+sim+rec", nofusion=False,
      decoder_output="patches", person_view="detector_crop", teacher_norm="clip",
      relation_scope="global", released=False, demo=False)
  if args.released:
    args.decoder_output, args.person_view = "cls_broadcast", "second_view"
    args.teacher_norm, args.relation_scope, args.mask_ratio = "imagenet", "local", 0.9

  config = common.base_config()
  config.task = "pretrain"
  config.batch_size = 512
  config.total_epochs = 200
  config.warmup_epochs = 40

  config.model = ml_collections.ConfigDict(dict(
      variant=args.variant,
      image_size=224,
      # None (unset): the variant's. Set an int to override (e.g. --config.model.patch_size=8).
      patch_size=common.variant_default(),
      decoder_width=common.variant_default(),   # the variant's: 512 (mu: 32)
      decoder_depth=common.variant_default(),   # 8 (mu: 1)
      decoder_heads=common.variant_default(),   # 16 (mu: 2)
      decoder_output=args.decoder_output,
      fusion="none" if args.nofusion else "easyfusion",
      fusion_heads=3,
      mask_ratio=args.mask_ratio,
      dtype="bfloat16",                  # compute; parameters and optimizer stay float32
      remat=False,
      attention_impl="explicit",         # 'xla' / 'cudnn': fused attention kernels on GPU
  ))
  config.teacher = ml_collections.ConfigDict(dict(
      path="",                           # HF CLIP ViT-B/16 directory or OpenAI ViT-B-16.pt
      tokenizer="",                      # defaults to `path` (needed for an OpenAI .pt file)
      input_norm=args.teacher_norm,      # 'clip' (its own statistics) or 'imagenet' (released)
      dtype="float32",                   # released: text tower float32, image tower fp16
      cache_text=True,                   # text embeddings computed once per data set
  ))
  config.data = ml_collections.ConfigDict(dict(
      name="emoset",
      data_dir="",                       # where `tools.prepare` wrote the TFDS data
      train_split="train+val",           # the released code pre-trains on train+val
      person_view=args.person_view,
      caption_field="caption",           # or 'caption_no_emotion' (label kept out of the text)
      scale_min=0.2,                     # RandomResizedCrop scale (0.2, 1)
      num_workers=8,                     # Grain worker processes (0: in the main process)
      read_threads=0,                    # per-process read threads (0: the pipeline default, min(16, 2 × cores))
      prefetch=2,                        # batches prefetched onto the devices
  ))
  components = set(args.components.split("+"))
  unknown = components - {"con", "sim", "rec", "nce"}
  if unknown:
    raise common.ConfigArgumentError(
        f"config argument components={args.components!r}: unknown components "
        f"{sorted(unknown)}{common.did_you_mean(sorted(unknown)[0], ('con', 'sim', 'rec', 'nce'))}"
        "; use con, sim, rec, nce joined by '+' (e.g. components=con+sim)")
  config.loss = ml_collections.ConfigDict(dict(
      con=float("con" in components), sim=float("sim" in components),
      rec=float("rec" in components), nce=float("nce" in components),
      relation_scope=args.relation_scope,
      norm_pix=False,
      nce_temperature=0.07,
  ))
  config.optim = common.optim_config(b2=0.95)
  # Epochs 100 and 200 are kept for good (the authors released both).
  config.checkpoint = common.checkpoint_config(every_steps=2000, keep_every_epochs=100)
  # In-training kNN / zero-shot evaluation (README "Evaluation"); every_steps=0: off.
  config.eval = ml_collections.ConfigDict(dict(
      every_steps=0,                 # > 0: evaluate every this many steps and at the end
      dataset="emoset",              # a labelled data set prepared in data_dir (or emotion_folder/<name>)
      data_dir="",                   # "" = config.data.data_dir
      split="test",                  # the queries: EmoSet test is held out of train+val
      max_examples=1000,             # a fixed random subset of the split (0: all of it)
      bank_split="train",            # the kNN memory bank (labels used only here)
      bank_max_examples=5000,
      feature="mean",                # kNN features: mean / cls (encoder) or gamma (student token)
      k=20, temperature=0.07,
      zeroshot=False,                # also γ vs the teacher's text embeddings of the template
      caption_template=CAPTION_TEMPLATE,
      resize=0,                      # shorter side before the centre crop; 0: image_size / 0.875
      batch_size=256,                # global
  ))

  if args.demo:
    _demo(config)
  return config


def _demo(config):
  common.demo_base(config, batch_size=32, total_epochs=40)
  config.warmup_epochs = 4
  config.teacher.path = f"{common.DEMO_DIR}/tiny_clip"
  config.optim.lr = 1e-3
  config.checkpoint.every_steps = 100
  config.log.every_steps = 20
  config.eval.batch_size = 32          # --config.eval.every_steps=N switches it on

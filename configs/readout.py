r"""Read-outs of a pre-trained checkpoint with no training: kNN and zero-shot (README "Evaluation").

  kind=knn       weighted kNN (cosine, k = 20, votes exp(s / T), T = 0.07) over frozen
                 features: the train split is the memory bank, val and test are classified.
                 Features (`knn.feature`): `mean` (mean patch token after the encoder's final
                 norm, the linear probe's; any encoder checkpoint), `cls`, or `gamma` (the
                 UniEmoX student token; UniEmoX weights only).
  kind=zeroshot  the student token γ scored against the teacher's text embeddings of prompts
                 ("The overall emotion conveyed is {emotion}." and a small ensemble, averaged
                 and normalised), next to the teacher's own zero-shot (CLIP's image tower on
                 the same images); the prompt setting with the better val top-1 gives the test
                 numbers. Needs UniEmoX weights with their fusion (a pre-training run of ours
                 or a released UniEmoX .pth); an MAE checkpoint is refused (use kNN / probe).

Launch (the dataset first: emo8, fi, emotion6, unbiasedemo, caer_s, heco):

  python main.py --config=configs/readout.py:emo8,kind=knn --workdir=$WORKDIR \
      --config.data.data_dir=$TFDS_DIR --config.init=$PRETRAIN_WORKDIR
  python main.py --config=configs/readout.py:emo8,kind=zeroshot --workdir=$WORKDIR \
      --config.data.data_dir=$TFDS_DIR --config.init=$PRETRAIN_WORKDIR \
      --config.teacher.path=$CLIP_DIR

What to expect: one forward pass per image (kNN: train + val + test; zero-shot: val + test,
student and teacher), minutes on one GPU for the benchmarks; `results.json` with test top-1 /
top-3, per-class recall, macro-F1, ECE, Mikels metrics (8-class sets), confusion and
reliability PNGs under `eval/`. No published numbers to compare with (docs/method.md §0).

Arguments: `<dataset>`, `kind=knn|zeroshot`, `variant=B/16|L/16|H/14`, `feature=mean|cls|gamma`
(kNN), `demo` (the embedded demo's tiny model, data and teacher; after `bash demo.sh`).

Demo (after `bash demo.sh`; seconds):
  python main.py --config=configs/readout.py:emo8,kind=knn,demo --workdir=demo_out/knn
  python main.py --config=configs/readout.py:emo8,kind=zeroshot,demo --workdir=demo_out/zeroshot
"""
import ml_collections

from configs import common
from configs.finetune import NUM_CLASSES

KINDS = ("knn", "zeroshot")
# The last sentence of every pre-training caption (docs/method.md §2 "Captions").
CAPTION_TEMPLATE = "The overall emotion conveyed is {emotion}."
# A small prompt ensemble: text embeddings of these are normalised, averaged and normalised.
ENSEMBLE = (
    CAPTION_TEMPLATE,
    "A photo that conveys {emotion}.",
    "An image that evokes {emotion}.",
    "The emotion of this picture is {emotion}.",
    "A picture that makes people feel {emotion}.",
)


def get_config(arg=None):
  first = (arg or "").split(",")[0]
  dataset = first if first and "=" not in first and first != "demo" else ""
  rest = ",".join((arg or "").split(",")[1:]) if dataset else arg
  args = common.parse_arg(rest, kind="knn", variant="L/16", feature="mean", demo=False)
  dataset = dataset or "emo8"
  if dataset not in NUM_CLASSES:
    raise common.ConfigArgumentError(
        f"unknown read-out dataset {dataset!r}"
        f"{common.did_you_mean(dataset, [*NUM_CLASSES, 'demo'])}; choose one of "
        f"{', '.join(sorted(NUM_CLASSES))}, e.g. configs/readout.py:emo8,kind=knn")
  if args.kind not in KINDS:
    raise common.ConfigArgumentError(
        f"config argument kind={args.kind!r}{common.did_you_mean(args.kind, KINDS)}; use "
        f"kind=knn or kind=zeroshot")

  config = common.base_config()
  config.task = args.kind
  config.model = ml_collections.ConfigDict(dict(
      variant=args.variant, image_size=224,
      patch_size=common.variant_default(),      # None: the variant's
      decoder_width=common.variant_default(),   # γ's layers: the pre-training run's
      decoder_depth=common.variant_default(),
      decoder_heads=common.variant_default(),
      # 'auto': the checkpoint's (a run of ours records it; a UniEmoX .pth names it by its
      # att_fusion keys); or one of models/fusion.FUSIONS.
      fusion="auto",
      fusion_heads=3,
      dtype="bfloat16", attention_impl="explicit"))
  config.teacher = ml_collections.ConfigDict(dict(
      path="",                 # zero-shot: the CLIP the student was distilled from
      tokenizer="",            # defaults to `path`
      input_norm="clip",       # the teacher's own image statistics (docs/method.md §3 #3)
      dtype="float32"))
  config.data = ml_collections.ConfigDict(dict(
      name=f"emotion_folder/{dataset}", data_dir="", train_split="train", val_split="val",
      test_split="test", eval_resize=256,
      # The person view of γ: the record's person box (whole image without one), or the
      # released code's 'second_view' (the whole image, normalised twice).
      person_view="detector_crop",
      num_workers=8, read_threads=0))
  config.knn = ml_collections.ConfigDict(dict(k=20, temperature=0.07, feature=args.feature))
  config.zeroshot = ml_collections.ConfigDict(dict(
      caption_template=CAPTION_TEMPLATE,
      ensemble=ENSEMBLE,
      logit_scale=0.0,         # 0: the teacher's exp(logit_scale) (CLIP: 100)
      teacher=True))           # also score the teacher's own image embeddings
  config.eval = ml_collections.ConfigDict(dict(batch_size=256))
  config.log = common.log_config()
  if args.demo:
    common.demo_base(config, batch_size=64, total_epochs=1)
    config.data.eval_resize = 73
    config.eval.batch_size = 64
    config.init = f"{common.DEMO_DIR}/pretrain"
    config.teacher.path = f"{common.DEMO_DIR}/tiny_clip"
  return config

#!/usr/bin/env bash
# The embedded demo, end to end on a CPU in minutes, with nothing but this repository:
#   generated data → prepare (TFDS) → a tiny random CLIP teacher → UniEmoX pre-training
#   → fine-tuning on the generated emo8 look-alike → test accuracy.
# Usage: bash demo.sh [DIR]      (default DIR: demo_out; the :demo configs point there)
# DEMO_PRETRAIN_STEPS / DEMO_FINETUNE_STEPS cut the runs short (CI uses them).
set -euo pipefail
cd "$(dirname "$0")"
D="${1:-demo_out}"
PY="${PYTHON:-python}"
export HF_HUB_OFFLINE=1
start=$(date +%s)

echo "== 1/6 generate the demo data in $D/raw"
"$PY" -m uniemox_jax.data.demo --out "$D/raw"
echo "== 2/6 prepare EmoSet (with person boxes) and emo8 as TFDS data in $D/tfds"
"$PY" -m uniemox_jax.tools.prepare --dataset=emoset --manual_dir="$D/raw/EmoSet" \
  --data_dir="$D/tfds" --person_boxes="$D/raw/EmoSet/person_boxes.json"
"$PY" -m uniemox_jax.tools.prepare --dataset=emotion_folder/emo8 --manual_dir="$D/raw/benchmarks" \
  --data_dir="$D/tfds"
echo "== 3/6 write a tiny random CLIP teacher to $D/tiny_clip"
"$PY" -m uniemox_jax.tools.tiny_clip --out="$D/tiny_clip" --captions_from="$D/raw/EmoSet"
echo "== 4/6 pre-train UniEmoX (mu) on the EmoSet look-alike"
pre_steps=()
[ -n "${DEMO_PRETRAIN_STEPS:-}" ] && pre_steps=(--config.total_steps="$DEMO_PRETRAIN_STEPS")
"$PY" main.py --config=configs/pretrain.py:demo --workdir="$D/pretrain" \
  --config.data.data_dir="$D/tfds" --config.teacher.path="$D/tiny_clip" "${pre_steps[@]}"
echo "== 5/6 fine-tune on the emo8 look-alike (best val epoch → test)"
ft_steps=()
[ -n "${DEMO_FINETUNE_STEPS:-}" ] && ft_steps=(--config.total_steps="$DEMO_FINETUNE_STEPS")
"$PY" main.py --config=configs/finetune.py:demo --workdir="$D/finetune" \
  --config.data.data_dir="$D/tfds" --config.init="$D/pretrain" "${ft_steps[@]}"
echo "== 6/6 results ($D/finetune/results.json)"
"$PY" - "$D/finetune/results.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"test top-1 {r['test_top1']:.3f}  top-3 {r['test_top3']:.3f}  "
      f"({r['test_num_examples']} images, 8 classes, chance 0.125; best val top-1 "
      f"{r['val_top1']:.3f} at epoch {r['best_epoch']:.0f})")
PYEOF
echo "demo finished in $(( $(date +%s) - start )) s"

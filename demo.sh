#!/usr/bin/env bash
# The embedded demo, end to end on a CPU in minutes, with nothing but this repository:
#   generated data (emotion in shapes, hues and people, not in the palette) → prepare (TFDS)
#   → a tiny CLIP teacher trained contrastively on the captioned EmoSet look-alike
#   → pre-training: UniEmoX, MAE only (L_rec) and a random initialisation
#   → read-outs of each on the few-label emo8 look-alike: zero-shot, kNN, linear probe,
#     fine-tuning → a table (DIR/summary.md, DIR/summary.json).
# Usage: bash demo.sh [DIR]      (default DIR: demo_out; the :demo configs point there)
# DEMO_SEED (default 0) seeds the data, the teacher and every run. DEMO_PRETRAIN_STEPS,
# DEMO_FINETUNE_STEPS and DEMO_TEACHER_STEPS cut the runs short (CI uses them).
set -euo pipefail
cd "$(dirname "$0")"
D="${1:-demo_out}"
PY="${PYTHON:-python}"
SEED="${DEMO_SEED:-0}"
export HF_HUB_OFFLINE=1
start=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - start )) s)"; }
seed=(--config.seed="$SEED")
pre_steps=(); [ -n "${DEMO_PRETRAIN_STEPS:-}" ] && pre_steps=(--config.total_steps="$DEMO_PRETRAIN_STEPS")
ft_steps=(); [ -n "${DEMO_FINETUNE_STEPS:-}" ] && ft_steps=(--config.total_steps="$DEMO_FINETUNE_STEPS")
data=(--config.data.data_dir="$D/tfds")

step "1/7 generate the demo data in $D/raw (seed $SEED)"
"$PY" -m uniemox_jax.data.demo --out "$D/raw" --size demo --seed "$SEED"
step "2/7 prepare EmoSet (with person boxes) and emo8 as TFDS data in $D/tfds"
"$PY" -m uniemox_jax.tools.prepare --dataset=emoset --manual_dir="$D/raw/EmoSet" \
  --data_dir="$D/tfds" --person_boxes="$D/raw/EmoSet/person_boxes.json"
"$PY" -m uniemox_jax.tools.prepare --dataset=emotion_folder/emo8 --manual_dir="$D/raw/benchmarks" \
  --data_dir="$D/tfds"
step "3/7 train a tiny CLIP teacher on the EmoSet look-alike's images and captions"
"$PY" -m uniemox_jax.tools.tiny_clip --out="$D/tiny_clip" --captions_from="$D/raw/EmoSet" \
  --patch_size=8 --train_steps="${DEMO_TEACHER_STEPS:-300}" --seed="$SEED" \
  --zeroshot_on="$D/raw/benchmarks/emo8"
teacher=(--config.teacher.path="$D/tiny_clip")
step "4/7 pre-train UniEmoX (mu) on the EmoSet look-alike"
"$PY" main.py --config=configs/pretrain.py:demo --workdir="$D/pretrain" "${data[@]}" \
  "${teacher[@]}" "${seed[@]}" "${pre_steps[@]}"
step "5/7 pre-train the same model as an MAE only (L_rec), and a random initialisation"
"$PY" main.py --config=configs/pretrain.py:demo,components=rec --workdir="$D/pretrain_mae" \
  "${data[@]}" "${teacher[@]}" "${seed[@]}" "${pre_steps[@]}"
# One step at learning rate 0: the initial weights, saved as a run the read-outs can start from.
"$PY" main.py --config=configs/pretrain.py:demo --workdir="$D/pretrain_random" "${data[@]}" \
  "${teacher[@]}" "${seed[@]}" --config.total_steps=1 --config.optim.lr=0 --config.optim.base_lr=0
step "6/7 read-outs on the emo8 look-alike (8 labelled images per class)"
for init in random mae uniemox; do
  case $init in random) src="$D/pretrain_random";; mae) src="$D/pretrain_mae";; *) src="$D/pretrain";; esac
  out="$D/readouts/$init"
  echo "-- $init: zero-shot, kNN, linear probe, fine-tuning (from $src)"
  "$PY" main.py --config=configs/readout.py:emo8,kind=zeroshot,demo --workdir="$out/zeroshot" \
    "${data[@]}" "${teacher[@]}" --config.init="$src"
  "$PY" main.py --config=configs/readout.py:emo8,kind=knn,feature=cls,demo --workdir="$out/knn" \
    "${data[@]}" --config.init="$src"
  "$PY" main.py --config=configs/linear_probe.py:demo,pool=cls --workdir="$out/linear_probe" \
    "${data[@]}" "${seed[@]}" --config.init="$src"
  "$PY" main.py --config=configs/finetune.py:demo --workdir="$out/finetune" "${data[@]}" \
    "${seed[@]}" --config.init="$src" "${ft_steps[@]}"
done
step "7/7 the table"
"$PY" -m uniemox_jax.tools.demo_summary --dir="$D"
echo "demo finished in $(( $(date +%s) - start )) s"

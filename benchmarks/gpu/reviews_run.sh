#!/usr/bin/env bash
# Prepared by benchmarks/gpu/reviews_prepare.py; run from the project root with the device tool:
#   run  command="bash benchmarks/gpu/reviews_run.sh"  carry=[".whl-reviews", ".gpu-data"]
# then unpack $OUT/results.tgz here (runs/bench-reviews/records/*.json) and run
# `benchmarks/reviews.py amazon --seeds 3`: it finds every model in the records and only pools them.
# The Amazon cross-validation of benchmarks/reviews.py on one GPU: the 10 (labels, fold) pairs as
# parallel processes. Records already made elsewhere (.gpu-data/records.tgz, written by
# reviews_prepare.py --records) are unpacked first, so only the models they lack train here.
# Everything comes back as one tarball, refreshed every 15 s (the tool fetches few files, and a
# run cut off at its limit keeps what it had). CPU_TIMING=1 adds fold 0 of stars5 on 2 pinned
# cores for CPU training times.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl-reviews/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/.gpu-data/site:$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p runs/bench-reviews/records runs/cpu-time/records logs
[ -f .gpu-data/records.tgz ] && tar xzf .gpu-data/records.tgz -C runs/bench-reviews
{ date -u; nvidia-smi; nvidia-smi -L; lscpu | head -20; python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; } > logs/env.txt 2>&1
xz -d -T4 .gpu-data/minilm/model.shuffled.xz && python3 benchmarks/gpu/unpack_minilm.py .gpu-data/minilm || exit 4
sha256sum .gpu-data/minilm/model.safetensors >> logs/env.txt
D=(--set data.path=.gpu-data/reviews/amazon_unlocked_mobile.csv.gz --minilm-set model.pretrained=.gpu-data/minilm)
pack() {  # everything worth keeping, as one file in $OUT
  tar czf $OUT/.results.tgz logs runs/bench-reviews/records runs/cpu-time/records \
    $(ls runs/bench-reviews/*/history.json runs/cpu-time/*/history.json 2>/dev/null) 2>/dev/null
  mv $OUT/.results.tgz $OUT/results.tgz
}
pids=()
for L in stars5 stars3; do for K in 0 1 2 3 4; do
  taskset -c 0-13 timeout ${BUDGET:-480} python3 benchmarks/reviews.py amazon --labels $L --fold $K --seeds 3 \
    "${D[@]}" --set device=cuda --set train.num_threads=1 > logs/$L-$K.log 2>&1 &
  pids+=($!)
done; done
if [ "${CPU_TIMING:-0}" = 1 ]; then
  taskset -c 14,15 timeout ${BUDGET:-480} python3 benchmarks/reviews.py amazon --labels stars5 --fold 0 --seeds 1 \
    --root runs/cpu-time "${D[@]}" --set device=cpu --set train.num_threads=2 --minilm-set train.epochs=1 \
    > logs/cpu.log 2>&1 &
  pids+=($!)
fi
( while sleep 15; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> logs/gpu-util.txt; pack; done ) &
copier=$!
for p in "${pids[@]}"; do wait $p; done
kill $copier; echo "all done $(date -u)" >> logs/env.txt
pack

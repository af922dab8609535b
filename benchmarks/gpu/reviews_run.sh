#!/usr/bin/env bash
# Prepared by benchmarks/gpu/reviews_prepare.py; run from the project root with the device tool:
#   run  command="bash benchmarks/gpu/reviews_run.sh"  carry=[".whl-reviews", ".gpu-data"]
# then copy $OUT/records/*.json to runs/bench-reviews/records/ and run `benchmarks/reviews.py amazon --seeds 3`
# here: it finds every model in the records and only pools them into the tables.
# The Amazon cross-validation of benchmarks/reviews.py on one GPU: the 10 (labels, fold) pairs as
# parallel processes, records copied to $OUT as they are written; plus fold 0 of stars5 on 2
# pinned CPU cores for the CPU training times (MiniLM: one epoch).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl-reviews/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/.gpu-data/site:$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p $OUT/records $OUT/cpu-records $OUT/logs
{ date -u; nvidia-smi; nvidia-smi -L; lscpu | head -20; python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; } > $OUT/env.txt 2>&1
xz -d -T4 .gpu-data/minilm/model.shuffled.xz && python3 benchmarks/gpu/unpack_minilm.py .gpu-data/minilm || exit 4
sha256sum .gpu-data/minilm/model.safetensors >> $OUT/env.txt
D=(--set data.path=.gpu-data/reviews/amazon_unlocked_mobile.csv.gz --minilm-set model.pretrained=.gpu-data/minilm)
pids=()
for L in stars5 stars3; do for K in 0 1 2 3 4; do
  taskset -c 0-13 timeout ${BUDGET:-480} python3 benchmarks/reviews.py amazon --labels $L --fold $K --seeds 3 \
    "${D[@]}" --set device=cuda --set train.num_threads=1 > $OUT/logs/$L-$K.log 2>&1 &
  pids+=($!)
done; done
taskset -c 14,15 timeout ${BUDGET:-480} python3 benchmarks/reviews.py amazon --labels stars5 --fold 0 --seeds 1 \
  --root runs/cpu-time "${D[@]}" --set device=cpu --set train.num_threads=2 --minilm-set train.epochs=1 \
  > $OUT/logs/cpu.log 2>&1 &
cpu=$!
( while sleep 15; do cp runs/bench-reviews/records/*.json $OUT/records/ 2>/dev/null
    cp runs/cpu-time/records/*.json $OUT/cpu-records/ 2>/dev/null; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> $OUT/logs/gpu-util.txt; done ) &
copier=$!
for p in "${pids[@]}"; do wait $p; done
echo "gpu folds done $(date -u)" >> $OUT/env.txt
cp runs/bench-reviews/records/*.json $OUT/records/ 2>/dev/null
wait $cpu; cp runs/cpu-time/records/*.json $OUT/cpu-records/ 2>/dev/null
for f in runs/bench-reviews/*/history.json runs/cpu-time/*/history.json; do d=$(dirname $f); mkdir -p $OUT/hist/$(basename $d); cp $f $OUT/hist/$(basename $d)/; done
kill $copier; echo "all done $(date -u)" >> $OUT/env.txt

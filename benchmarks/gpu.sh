#!/usr/bin/env bash
# Every GPU benchmark in one call: GPU machines are lent briefly, so one command runs several parts
# and they share the synthetic checkpoints (built once under $WORK). Results land in benchmarks/results/.
#
#   HOOKLAB_MACHINE=h200x2 bash benchmarks/gpu.sh tests load merge trace cache
#
# Parts: tests (the GPU tests), load (multi-GPU loading), merge (two 8B-shaped models on one GPU),
# trace (batched against the per-(token, layer) loop, 1 and 2 GPUs; trace-bf16 the 8B model in bf16),
# disk (write speed, the bound of a collection to disk), cache (1M tokens to disk),
# edit (ROME/MEMIT speed on an 8B-shaped model over 2 GPUs; EDIT_MEMIT: batch sizes). Each part has its own time limit so
# one that hangs does not take the others with it.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK=${WORK:-/tmp/hooklab-bench}
B8="$WORK/llama3-8b"  # shared by load, trace and edit (merge builds its own pair)

part() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@"
    echo "=== $name: exit $? after $((SECONDS - t0)) s"
}

build8b() { part build 240 python -c "import sys; sys.path.insert(0, 'benchmarks'); import synthetic; synthetic.build('$B8', 'llama3-8b')"; }

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for job in "$@"; do
    case $job in
        tests) part tests 150 python -m pytest -q -m gpu tests -p no:cacheprovider --ignore=tests/test_notebooks.py ;;
        load) build8b
              part load 300 python benchmarks/load.py --ckpt "$B8" --gpus 2 ;;
        merge) part merge 300 python benchmarks/merge.py --device cuda --shape llama3-8b --work "$WORK" ;;
        trace) build8b
               part trace-small 150 python benchmarks/trace.py --shape smollm2-135m --gpus 1 2
               part trace-8b 200 python benchmarks/trace.py --shape llama3-8b --ckpt "$B8" --gpus 1 2 ;;
        trace-bf16) build8b
               part trace-8b-bf16 200 python benchmarks/trace.py --shape llama3-8b --ckpt "$B8" --gpus 1 2 --dtype bfloat16 ;;
        disk) part disk 60 dd if=/dev/zero of="$WORK/dd.bin" bs=64M count=64 conv=fdatasync  # what a collection to disk can reach
              rm -f "$WORK/dd.bin" ;;
        cache) part cache 240 python benchmarks/cache.py --device cuda --model synthetic:smollm2-135m \
                   --batch-size 64 --max-length 512 --parts ${CACHE_PARTS:-throughput memory} --rounds 2 ;;
        edit) build8b
              part edit 540 python benchmarks/edit.py --device cuda --gpus 2 --shape llama3-8b --ckpt "$WORK" \
                  --rome-n 3 --memit ${EDIT_MEMIT:-50} --stats-tokens 20000 ;;
        *) echo "unknown part $job" ;;
    esac
done

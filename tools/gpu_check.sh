#!/usr/bin/env bash
# The prepared GPU check: one device call, within BUDGET seconds (default 480), most needed
# first; each section is skipped when too little time is left. Writes as it goes to $OUT
# (default /tmp/gpu_out): log.txt, and one JSON per run named CARD_DATE_WHAT.json (each holds
# the card, the torch version and the command): copy those into docs/gpu/.
#   bash tools/gpu_check.sh                    # everything
#   ONLY="r18 data" bash tools/gpu_check.sh    # some sections: tests profile r18 r50 data ddp epoch
# Run from the repository root.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
PY=${PY:-python3}  # the device image has python3, not python
OUT=${OUT:-/tmp/gpu_out}
BUDGET=${BUDGET:-480}
ONLY=${ONLY:-tests profile r18 r50 data ddp epoch}
START=$(date +%s)
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-')
TAG="${CARD}_$(date +%Y-%m-%d)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
nproc

left() { echo $((BUDGET - ($(date +%s) - START))); }
# want SECTION SECONDS: whether SECTION was asked for and SECONDS are left for it
want() {
    case " $ONLY " in *" $1 "*) ;; *) return 1 ;; esac
    if [ "$(left)" -lt "$2" ]; then echo "== $1 SKIPPED: $(left) s left, it needs $2"; return 1; fi
    echo "== $1 ($(left) s left)"
}

# Photo-like JPEGs of 500x375 (~50 KB, smooth patterns and a little noise), made on the CPUs
# while the tests run: 8 classes x 3000 train (94 batches of 256), 8 x 40 val.
$PY - <<'PY' &
import numpy as np
from multiprocessing import Pool
from pathlib import Path
from PIL import Image
root = Path("/tmp/jpeg")
def make(job):
    split, c, i = job
    rng = np.random.default_rng(c * 100_000 + i)
    y, x = np.mgrid[0:375, 0:500]
    ch = [np.sin(x / (9 + 5 * k + c) + rng.uniform(0, 6)) + np.cos(y / (7 + 3 * k)) for k in range(3)]
    arr = (np.stack(ch, -1) + 2) * 55 + rng.normal(0, 6, (375, 500, 3))
    d = root / split / f"class{c}"
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=90)
jobs = [(s, c, i) for s, n in (("train", 3000), ("val", 40)) for c in range(8) for i in range(n)]
with Pool(12) as pool:
    pool.map(make, jobs, chunksize=64)
print("wrote", len(jobs), "JPEGs of 500x375 to", root)
PY
TREE=$!

if want tests 60; then
    timeout 150 $PY -m pytest -q -p no:cacheprovider -rs tests/trainer/test_cuda_sync.py \
        tests/trainer/data/test_gpu_decode.py tests/trainer/data/test_mix.py 2>&1 | tail -15
fi
wait $TREE
du -sh /tmp/jpeg/train

if want profile 40; then
    timeout 90 $PY tools/benchmarks/gpu_profile_step.py --json "$OUT/${TAG}_profile-resnet18.json"
fi
if want r18 150; then
    timeout 240 $PY tools/bench.py --preset gpu --model resnet18 --ema --compile --rounds 3 \
        --json "$OUT/${TAG}_bench-resnet18.json" 2>&1 | tail -25
fi
if want r50 60; then
    timeout 120 $PY tools/bench.py --preset gpu --model resnet50 --ema \
        --json "$OUT/${TAG}_bench-resnet50.json" 2>&1 | tail -25
fi
if want data 80; then
    for decode in cpu gpu; do
        timeout 120 $PY tools/bench.py --data /tmp/jpeg --decode $decode --model resnet50 \
            --img-size 224 --batch-size 256 --workers 16 --rounds 2 \
            --json "$OUT/${TAG}_data-$decode.json" 2>&1 | tail -14
    done
fi
if want ddp 45; then
    # torchrun with one process: a process group of one over NCCL, the model in DDP.
    rm -rf /tmp/ddp_run
    timeout 150 $PY -m torch.distributed.run --standalone --nproc_per_node 1 tools/train.py --device cuda \
        --epochs 2 --out /tmp/ddp_run 2>&1 | tail -12
    rc=${PIPESTATUS[0]}
    $PY - "$rc" "$OUT/${TAG}_ddp-1-process.json" <<'PY'
import json, sys, torch
from pathlib import Path
run = Path("/tmp/ddp_run")
report = run / "export_report.json"
doc = {
    "card": torch.cuda.get_device_name(0), "torch": torch.__version__,
    "command": "torchrun --standalone --nproc_per_node 1 tools/train.py --device cuda --epochs 2",
    "returncode": int(sys.argv[1]),
    "metrics_rows": len((run / "metrics.csv").read_text().splitlines()) - 1 if (run / "metrics.csv").exists() else 0,
    "onnx": (run / "model.onnx").is_file(),
    "export_report": json.loads(report.read_text()) if report.is_file() else None,
}
Path(sys.argv[2]).write_text(json.dumps(doc, indent=2, default=str))
print(json.dumps({k: v for k, v in doc.items() if k != "export_report"}))
PY
fi
if want epoch 140; then
    # Whole epochs of ~20 s: resnet50 at 224 px, 370 steps of 256.
    timeout 300 $PY tools/bench.py --preset gpu --model resnet50 --steps 370 --rounds 1 \
        --json "$OUT/${TAG}_epoch20-resnet50.json" 2>&1 | tail -14
fi
echo "== done in $(( $(date +%s) - START )) s"
ls -la "$OUT"

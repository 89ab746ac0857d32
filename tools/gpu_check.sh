#!/usr/bin/env bash
# The prepared GPU check (one device call, about 6 minutes), most needed first: versions, the
# CUDA tests, the --data path on a generated JPEG tree (CPU and --decode gpu), bench.py's GPU
# preset with EMA (LIGHTNING=1 adds Lightning), and with DDP=1 the overhead of DDP with one
# process. Results and the whole log go to $OUT (default /tmp/gpu_out).
# Run from the repository root: bash tools/gpu_check.sh
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/gpu.txt"

echo "== CUDA tests (sync, nvjpeg decode)"
timeout 120 python -m pytest -q -p no:cacheprovider tests/trainer/test_cuda_sync.py tests/trainer/data/test_gpu_decode.py 2>&1 | tail -30

echo "== JPEG tree"
# Smooth patterns with a little noise: ~40-60 KB per 500x375 JPEG, as photos are. (Pure noise
# makes 170 KB files, and moving those bytes from the workers then limits both decode paths.)
# 8 x 1500 training images: 47 batches of 256 per epoch, several per loader worker.
python - <<'PY'
import numpy as np
from multiprocessing import Pool
from pathlib import Path
from PIL import Image
root = Path("/tmp/jpeg")
def make(job):
    split, c, i = job
    rng = np.random.default_rng(c * 10_000 + i)
    y, x = np.mgrid[0:375, 0:500]
    ch = [np.sin(x / (9 + 5 * k + c) + rng.uniform(0, 6)) + np.cos(y / (7 + 3 * k)) for k in range(3)]
    arr = (np.stack(ch, -1) + 2) * 55 + rng.normal(0, 6, (375, 500, 3))
    d = root / split / f"class{c}"
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=90)
jobs = [(s, c, i) for s, n in (("train", 1500), ("val", 30)) for c in range(8) for i in range(n)]
with Pool(16) as pool:
    pool.map(make, jobs, chunksize=64)
print("wrote", len(jobs), "JPEGs of 500x375")
PY
echo "== bench --data (resnet50, 224 px, batch 256, 16 workers)"
timeout 120 python tools/bench.py --data /tmp/jpeg --steps 40 --rounds 2 --model resnet50 --img-size 224 --batch-size 256 --workers 16 --json "$OUT/bench_data.json" 2>&1 | tail -20
echo "== bench --data --decode gpu (nvjpeg, crops on the GPU)"
timeout 120 python tools/bench.py --data /tmp/jpeg --decode gpu --steps 40 --rounds 2 --model resnet50 --img-size 224 --batch-size 256 --workers 16 --json "$OUT/bench_data_gpu.json" 2>&1 | tail -20

echo "== bench --preset gpu"
timeout 200 python tools/bench.py --preset gpu --ema ${LIGHTNING:+--lightning} --json "$OUT/bench_gpu.json" 2>&1 | tail -40

if [ -n "${DDP:-}" ]; then
echo "== DDP with 1 process vs no DDP (resnet50, 224 px, batch 128, bf16, channels_last)"
timeout 120 python - <<'PY' 2>&1 | tee "$OUT/ddp1.txt"
import os, time, torch, torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from trainer.models import build_model
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
dist.init_process_group("nccl", rank=0, world_size=1)
torch.backends.cudnn.benchmark = True
x = torch.randn(128, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 100, (128,), device="cuda")
def run(wrap, steps=40):
    torch.manual_seed(0)
    model = build_model("resnet50", 100).cuda().to(memory_format=torch.channels_last)
    net = DistributedDataParallel(model, device_ids=[0]) if wrap else model
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x), y)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(10): step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(steps): step()
    torch.cuda.synchronize()
    return steps * 128 / (time.perf_counter() - t)
res = {}
for rnd in range(3):
    for wrap in (False, True):
        res.setdefault(wrap, []).append(run(wrap))
plain, ddp = sorted(res[False])[1], sorted(res[True])[1]
print(f"no DDP {plain:.0f} img/s, DDP(1 process) {ddp:.0f} img/s, ratio {ddp / plain:.3f} (median of 3)")
dist.destroy_process_group()
PY
fi
ls -la "$OUT"

"""Where a training step's time goes on a GPU: the bare loop against the Engine with hooks.

python tools/benchmarks/gpu_profile_step.py --json profile.json      # resnet18 at 32 px, batch 512

For each run, one epoch of ``--steps`` steps under ``torch.profiler``: kernels launched per
step, the GPU's busy time per step (sum of kernel times) and the wall time per step. When wall
time per step is well above the GPU's busy time, the step is bound by the host (Python and
kernel launches), and every extra kernel or line of Python per step costs its full time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python tools/benchmarks/gpu_profile_step.py), not as a module
    # Python put tools/benchmarks/ first on sys.path: the repository root takes its place, so
    # the tools import as the tools package and no file in tools/benchmarks/ shadows a package.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parents[1]), *(p for p in sys.path if Path(p).resolve() != _here)]

import torch
from torch.profiler import ProfilerActivity, profile

from tools.benchmarks.bench_common import DeviceBatches, EngineRun, Workload, hooks_for_bench, sync
from tools.benchmarks.bench_steps import BareLoop


def _profiled(run: Any, device: torch.device, steps: int) -> dict[str, float]:
    run.run_epoch()  # warm-up: cuDNN autotuning, allocator
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        cpu0 = time.thread_time()
        run.run_epoch()
        sync(device)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    return {
        "kernels_per_step": launches / steps,
        "gpu_busy_ms_per_step": kernel_us / 1e3 / steps,
        "wall_ms_per_step": 1e3 * wall / steps,  # the whole epoch, validation included
        "main_thread_cpu_ms_per_step": 1e3 * cpu / steps,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--device", default="cuda", help="cuda; cpu only to try the script")
    args = p.parse_args()
    device = torch.device(args.device)
    w = Workload(args.model, args.img_size, args.batch_size, steps=args.steps, val_batches=1)
    data = DeviceBatches(w, device)
    out: dict[str, Any] = {
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "command": " ".join(["python", *sys.argv]),
        "workload": w.name,
    }
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "bare": BareLoop(w, data, device, "bf16-mixed", 4),
            "engine": EngineRun("engine", w, data, device, "bf16-mixed", 4),
            "hooks": EngineRun(
                "hooks", w, data, device, "bf16-mixed", 4, hooks_for_bench(Path(tmp))
            ),
        }
        for name, run in runs.items():
            out[name] = _profiled(run, device, args.steps)
            print(name, json.dumps(out[name]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

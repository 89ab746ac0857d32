"""Train an image classifier on an ImageFolder tree (or, with no --data, on the built-in demo).

python tools/train.py --data DIR [--model resnet18 --pretrained --epochs 20 ...]
python tools/train.py                         # demo: drawn shapes, a small CNN, ~2 min on a CPU
python tools/train.py --resume runs/NAME      # continue a run where it stopped
torchrun --nproc_per_node 2 tools/train.py --data DIR     # DDP: one process per GPU
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python tools/train.py), not imported as tools.train
    # Python put tools/ first on sys.path: the repository root takes its place, so
    # the tools import as the tools package and no file in tools/ shadows a package.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p).resolve() != _here)]

from tools.runtime import collector_paused, steady_malloc

# Importing torch, torchvision and the rest makes ~0.5 M objects and hardly any garbage: with
# the collector on, its full scans of them take ~0.5 s of start-up (tools/runtime.py).
with collector_paused():
    from rich.console import Console
    from rich.logging import RichHandler
    from rich.markup import escape

    from hooks import WandbHook, default_hooks
    from hooks.checkpoint import check_latest
    from hooks.render.verbosity import Verbosity
    from hooks.wandb import check_api_key
    from tools.lr_find import range_test, write_results
    from tools.train_config import (
        build_data,
        build_loss_from_config,
        parse_config,
        record_effective,
    )
    from trainer import run_files as files
    from trainer import run_folder as rf
    from trainer.checkpoint import checkpoint_file, load_checkpoint
    from trainer.config import TrainConfig
    from trainer.config_cli import PIPELINE_KEY, dump_config, saved_config
    from trainer.data.demo import demo_dataset
    from trainer.data.pipelines import describe_pipelines
    from trainer.device import resolve_device
    from trainer.distributed import (
        barrier,
        broadcast_object,
        destroy_distributed,
        get_local_rank,
        init_distributed,
        is_global_zero,
    )
    from trainer.engine import Engine
    from trainer.errors import ConfigError, NonFiniteLossError, UserError
    from trainer.export import ExportVerificationError
    from trainer.io import free_space, is_disk_full
    from trainer.models import SmallCNN, build_model
    from trainer.rng import seed_everything

log = logging.getLogger("trainer")
new_run_dir = rf.new_run_dir  # tests name the folder through it

def run(config: dict[str, Any]) -> Engine:
    """Build data, model, engine and hooks from a parsed config and train.

    Under torchrun, joins the process group first (so the data shards from the start) and
    leaves it at the end, on errors too.
    """
    owns_group = init_distributed(config["device"])
    if not is_global_zero():
        logging.getLogger("trainer").setLevel(logging.WARNING)  # rank 0 tells the story
    try:
        return _train(config)
    finally:
        if owns_group:
            destroy_distributed()


def _train(config: dict[str, Any]) -> Engine:
    if config["data"]:  # absolute in args.json, which --resume replays from any folder
        config["data"] = os.path.abspath(os.path.expanduser(config["data"]))
    resume = config["resume"]
    if resume == "auto":
        if not config["out"]:
            raise ConfigError("--resume without a path needs --out RUN_FOLDER (or --resume PATH)")
        resume = config["out"]
    if resume is not None and config["overwrite"]:
        raise ConfigError(
            "--overwrite starts a new run, --resume continues one; pass only one of them"
        )
    if resume is not None and not config["out"]:
        config["out"] = str(rf.run_dir_of(Path(resume)))
    made = None  # the folder this run created, removed again if it fails before writing to it
    if config["out"]:
        out = Path(config["out"])
    else:
        # Rank 0 names (and claims) the folder: the ranks' clocks (and machines) differ.
        made = new_run_dir(Path("runs")) if is_global_zero() else None
        out = Path(broadcast_object(str(made)))
    config["out"] = str(out)
    try:
        return _train_in(config, out, resume)
    except BaseException:
        if made is not None:
            with contextlib.suppress(OSError):
                made.rmdir()  # only while still empty
        raise


def _train_in(config: dict[str, Any], out: Path, resume: str | None) -> Engine:
    # Everything is checked before anything in the run folder is written: a refused or failed
    # start leaves it as it was.
    if config["wandb"]:
        check_api_key()  # online without a key: refused now, not at fit start
    if resume is not None:
        rf.check_lr_on_resume(config)
    continuing = resume is not None and rf.same_folder(out, rf.run_dir_of(Path(resume)))
    # Rank 0 writes the folder, so its view of it decides (other machines may not see it).
    problem = broadcast_object(
        rf.out_problem(out, config["overwrite"]) if is_global_zero() and not continuing else None
    )
    if problem:
        raise ConfigError(problem)
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        rf.check_resume_settings(ckpt, config, checkpoint_file(resume))
        if continuing:  # an older checkpoint of this run: its later files must survive
            done = len((ckpt.get("state") or {}).get("history") or [])
            check_latest(checkpoint_file(resume), out / files.CHECKPOINTS, done)
    cfg = TrainConfig.from_dict(config)

    if cfg.decode == "gpu" and resolve_device(cfg.device).type != "cuda":
        raise ConfigError(
            f"--decode gpu decodes JPEGs with nvjpeg on a CUDA device, but the device is "
            f"{resolve_device(cfg.device)}; drop --decode gpu, or use --device cuda"
        )
    if cfg.model == "small_cnn" and int(cfg.img_size or SmallCNN.MIN_SIZE) < SmallCNN.MIN_SIZE:
        raise ConfigError(  # else torch's "Output size is too small" at the first forward
            f"--img-size {cfg.img_size} is too small for small_cnn, which halves the image four "
            f"times: give at least {SmallCNN.MIN_SIZE}, or another --model"
        )
    if cfg.data is None and get_local_rank() == 0:
        demo_dataset()  # one process per machine generates it; the others wait, then reuse it
    barrier()
    root = Path(cfg.data) if cfg.data else demo_dataset()
    if cfg.data is None:
        log.info("no --data given: training on the built-in demo dataset at %s", root)
    data = build_data(cfg, root)
    if cfg.early_stopping and not len(data.val_samples):  # as its hook says, before any file
        raise ConfigError(
            f"--early-stopping watches the validation images, but {root} has none "
            "(--val-fraction 0, or no val/ folder). Keep a validation split, or drop "
            "--early-stopping."
        )
    if data.task == "multilabel" and len(data.val_samples) and not sum(data.class_counts["val"]):
        log.warning(
            "no validation image of %s carries a label: val/mAP is undefined (nan), so no "
            "epoch is best and best.pt is not written. Give validation images their labels.",
            root,
        )
    applied = record_effective(config, data)  # the values in use, for args.json
    if applied:  # multi-label: val/mAP, the whole image
        log.info(applied)
    cfg = TrainConfig.from_dict(config)
    log.info(data.summary())
    seed_everything(cfg.seed)  # the model's initial weights too
    model = build_model(str(cfg.model), data.num_classes, pretrained=cfg.pretrained)
    finder = None
    if cfg.lr == "auto":  # the range test leaves the model and data as they were
        finder = range_test(cfg, data, model)
        if finder.suggestion is None:
            raise ConfigError(
                f"--lr auto: the LR range test found no lr to suggest (the loss diverged after "
                f"{len(finder.lrs)} steps). Run tools/lr_find.py with the same flags to see the "
                "curve, then pass --lr."
            )
        config["lr"] = finder.suggestion
        cfg = TrainConfig.from_dict(config)
        log.info("--lr auto: the LR range test suggests lr %.3g; training with it", cfg.lr)
    if resume is not None and ckpt is not None:
        rf.check_resume_weights(ckpt, model, data.classes, config, checkpoint_file(resume))
        del ckpt  # fit reads it again; a large checkpoint should not be held twice meanwhile
    saved = saved_config(config)  # args.json, written by default_hooks' RunFolderHook
    saved[PIPELINE_KEY] = describe_pipelines(
        data.train_pipeline(), data.val_pipeline(), cfg.transforms
    )
    if is_global_zero():
        rf.claim(out, overwrite=bool(config["overwrite"]))
        if finder is not None:
            try:
                write_results(finder, out)
            except OSError as e:
                raise rf.write_error(out, e) from e

    hooks = default_hooks(out, cfg, verbosity=verbosity_of(config))
    if cfg.wandb:
        hooks.append(
            WandbHook(
                out,
                project=cfg.wandb_project,
                name=cfg.wandb_name,
                tags=[t.strip() for t in (cfg.wandb_tags or "").split(",") if t.strip()],
                log_artifacts=cfg.wandb_artifacts,
            )
        )
    loss = build_loss_from_config(cfg, data)
    engine = Engine(model, data, loss=loss, hooks=hooks, args=saved, **cfg.engine_kwargs())
    log.info(
        "model %s on %s, precision %s, %d epochs; run folder %s",
        cfg.model,
        engine.device,
        engine.precision,
        cfg.epochs,
        out,
    )
    t0 = time.perf_counter()
    gc.freeze()  # what exists now stays out of the collector's scans (tools/runtime.py)
    try:
        engine.fit(resume=resume)
    finally:
        gc.unfreeze()
    if engine.is_global_zero:
        _summary(engine, out, time.perf_counter() - t0, verbose=bool(config["verbose"]))
    return engine


def verbosity_of(config: dict[str, Any]) -> Verbosity:
    """--quiet / --verbose as a ``hooks.render.verbosity`` level (a replayed config may hold neither)."""
    if config.get("quiet"):
        return "quiet"
    return "verbose" if config.get("verbose") else "normal"


def _summary(engine: Engine, out: Path, seconds: float, verbose: bool = False) -> None:
    s = engine.state
    console = Console(stderr=True)
    console.print(
        f"[bold]done[/] in {seconds:.1f} s, {len(s.history)} epoch(s)"
        + (f" ({escape(s.stop_reason)})" if s.stop_reason else "")
    )
    if s.best is not None:
        best = s.best
        parts = [f"best epoch {int(best['epoch']) + 1}"]
        parts += [
            f"{k} {best[k]:.4f}"
            for k in ("val/acc", "val/acc_top5", "val/mAP", "val/macro_f1", "val/loss")
            if k in best and (k != "val/macro_f1" or "val/mAP" in best)  # multi-label
        ]
        console.print("  " + ", ".join(parts))
    # Paths are data, not rich markup: a folder named "[red]" or "a[/]b" prints as is.
    console.print(f"  run folder: {escape(str(out))}")
    names = [
        files.METRICS_CSV,
        files.PER_CLASS_CSV,
        files.STEPS_CSV,
        files.LABELS_MAPPING_JSON,
        f"{files.CHECKPOINTS}/{files.BEST_PT}",
        f"{files.CHECKPOINTS}/{files.LAST_PT}",
        files.MODEL_ONNX,
        files.REPORT_HTML,
        files.PLOTS,
    ]
    names = [name for name in names if (out / name).exists()]
    if verbose:
        for name in names:
            console.print(f"    {escape(str(out / name))}", soft_wrap=True)
    elif names:
        console.print(f"    {escape(', '.join(names))}", soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    steady_malloc()  # CPU training: far fewer page faults per step (tools/runtime.py)
    gc.freeze()  # the imports' objects stay out of the collector's scans (tools/runtime.py)
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        # markup=False (rich's default, spelled out): log lines carry paths and class names.
        handlers=[RichHandler(show_path=False, markup=False, console=Console(stderr=True))],
    )
    config: dict[str, Any] = {}
    started = time.time_ns()
    try:
        config = parse_config(argv)
        if config.pop("print_config"):
            # Exactly what args.json would hold, so the output replays with --config.
            print(dump_config(saved_config(config), config["format"]), end="")
            return 0
        level = log.level
        if config["quiet"]:
            log.setLevel(logging.WARNING)  # warnings and errors still show
        try:
            run(config)
        finally:
            log.setLevel(level)  # main() may run again in this process (tests, notebooks)
    except ExportVerificationError as e:
        print(
            f"error: training finished, but the ONNX export failed verification: {e} "
            f"The checkpoints in {config.get('out')}/checkpoints are kept; re-export with "
            "tools/export.py, or train with --no-export.",
            file=sys.stderr,
        )
        return 1
    except UserError as e:
        # The user's input needs fixing: say what and how, without a traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if not is_disk_full(e):
            raise
        print(f"error: {_disk_full_message(e, config.get('out'))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(_interrupted_message(config.get("out"), started), file=sys.stderr)
        return getattr(e, "exit_code", 130)
    return 0


def _disk_full_message(error: OSError, out: str | None) -> str:
    """A full disk met by a hook or a writer during the run (checkpoints have their own)."""
    where = Path(error.filename).parent if error.filename else Path(out or ".")
    space = free_space(where)
    if out and (Path(out) / files.CHECKPOINTS / files.LAST_PT).is_file():
        then = f"continue with --resume --out {out}"
    else:
        then = "run again with --overwrite (no epoch finished)"
    return (
        f"the disk is full: writing in {where} failed ({error.strerror or error})"
        f"{'; ' + space if space else ''}. Free some space or pick another --out, then {then}."
    )


def _interrupted_message(out: str | None, started_ns: int) -> str:
    """What an interrupted run left: ``interrupted.pt`` only if this run wrote it, and the
    resume command only if a finished epoch (``last.pt``) exists."""
    if not out:
        return "interrupted before the run folder was set up; nothing was saved."
    ckpts = Path(out) / files.CHECKPOINTS
    emergency = ckpts / files.INTERRUPTED_PT
    parts = ["interrupted."]
    if emergency.is_file() and emergency.stat().st_mtime_ns >= started_ns:
        parts.append(f"{emergency} holds the weights as they were.")
    if (ckpts / files.LAST_PT).is_file():
        parts.append(f"--resume --out {out} continues exactly from the last finished epoch.")
    else:
        parts.append("No epoch finished, so there is nothing to resume; start the run again.")
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())

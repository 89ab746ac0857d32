"""Engine: the training loop, written out, with hooks called at each point of it.

One fit, top to bottom::

    fit():  inside setup("fit") ... teardown("fit"), as validate, test and predict are
        [resume: load the checkpoint into model, optimizer, scheduler, EMA, state, hooks]
        on_fit_start, sanity check (2 val batches, phase "sanity") unless resuming, on_train_start
        for epoch in range(start, max_epochs):
            train_epoch(): on_train_epoch_start, per batch: to the device, forward, loss,
                zero_grad (first micro-batch of a step), backward, and every `accumulate`
                batches an optimizer step (clip, step, scheduler, EMA) and, where `val_every`
                falls, a validation (state.mid_epoch); then validation (phase "val"),
                epoch row appended to history, on_train_epoch_end
            stop if a hook set state.should_stop (on any rank)
        on_train_end, on_fit_end

Everything the loop knows lives in ``engine.state``; files, plots and the progress bar are hooks.

Under torchrun (``torchrun --nproc_per_node N tools/train.py ...``) the same loop runs in every
process: the engine joins the process group, trains through DistributedDataParallel, each rank
validates its shard of the split and the metrics are summed over ranks, so every rank holds the
same ``state``. Hooks run on every rank; those that write files or print do so on rank 0 only.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer.artifacts import ArtifactWriter
from trainer.batch import BatchToDevice
from trainer.checkpoint import check_resumable, checkpoint_file, load_checkpoint, save_checkpoint
from trainer.data.mix import keep_batch
from trainer.data.workers import end_workers
from trainer.device import autocast_dtype, place_model, resolve_device, resolve_precision
from trainer.distributed import (
    all_gather_object,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    destroy_distributed,
    device_for_rank,
    get_rank,
    get_world_size,
    in_process_group,
    init_distributed,
    is_global_zero,
    max_over_ranks,
    rank_seed,
)
from trainer.ema import ModelEMA
from trainer.errors import Interrupted
from trainer.hook import Hook, HookPlan, describe_hook_plan, hook_keys
from trainer.metrics import EvalTally, TrainTally, confusion_counter, track_best
from trainer.nonfinite import NonFiniteGuard, finite_flag
from trainer.optim import default_optimizer, warmup_cosine
from trainer.predict import PredictSource, predict
from trainer.rng import get_rng_state, rank_rng_state, seed_everything, set_rng_state
from trainer.signals import stop_on_signals
from trainer.state import EngineState
from trainer.val_check import ValCheck

log = logging.getLogger("trainer")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DataSource(Protocol):
    """What the engine needs from ``data`` (``ImageFolderData`` is one)."""

    classes: list[str]
    num_classes: int

    def train_loader(self) -> Iterable[Any]: ...
    def val_loader(self) -> Iterable[Any] | None: ...
    def test_loader(self) -> Iterable[Any] | None: ...


class Engine:
    """Trains, validates, tests and predicts with a classifier; hooks watch and steer.

    Args:
        model: an ``nn.Module`` mapping normalised NCHW float images to logits.
        data: batches of ``(images, targets)``; uint8 images are scaled and normalised on the
            device with ``data.mean`` / ``data.std``, float images are used as they come.
        max_epochs: epochs to train.
        optimizer: defaults to AdamW (fused on CUDA), no weight decay on biases and norms.
        scheduler: defaults to linear warmup then cosine decay, stepped per optimizer step.
        loss: defaults to cross-entropy with ``label_smoothing``.
        lr: peak learning rate of the default optimizer.
        weight_decay: AdamW's decoupled weight decay.
        warmup_epochs: length of the linear warmup, in epochs (fractions allowed).
        label_smoothing: for the default loss.
        precision: "32", "16-mixed", "bf16-mixed" or "auto" (bf16 on CUDA where supported,
            else fp16 on CUDA, fp32 on the CPU).
        ema_decay: decay of the weights' moving average; 0 disables EMA. When on, validation,
            best-checkpoint selection and export use the EMA weights.
        grad_clip: clip gradients to this total norm; 0 disables.
        accumulate: micro-batches per optimizer step.
        device: "auto" (cuda, then mps, then cpu) or a torch device string.
        hooks: ``Hook`` instances; lower ``order`` runs first, ties keep list order.
        seed: seeds Python, NumPy and torch.
        sanity_steps: validation batches run before training to catch errors early; 0 skips.
        monitor: metric in ``state.metrics`` that picks ``state.best``.
        mode: "max" or "min" for ``monitor``.
        val_every: also validate each fraction F of an epoch or N steps (``trainer.val_check``).
        compile: wrap the model in ``torch.compile`` for the training forward pass.
        sync_bn: under DDP, turn BatchNorm layers into SyncBatchNorm (CUDA only), so the
            statistics span the global batch; useful when the per-GPU batch is small.
        args: the run's configuration, stored in checkpoints so a run can be replayed.
        max_nonfinite: a NaN or infinite loss skips its optimizer step, EMA update and
            BatchNorm statistics update; this many skipped steps in a row end the fit with
            ``NonFiniteLossError``. Skips are counted in ``state.metrics["train/skipped_steps"]``.

    Attributes:
        resume_path: the checkpoint file the last ``load_checkpoint`` read, else None;
            ``CheckpointHook`` relinks ``best.pt`` and the top-k from it on resume.

    Signals: during ``fit`` SIGINT and SIGTERM finish the current step, then raise
    ``trainer.errors.Interrupted`` (hooks get ``on_exception``; ``CheckpointHook`` saves
    ``checkpoints/interrupted.pt``). A second signal exits at once.

    Distributed: started by torchrun, the engine joins the process group itself (see
    ``trainer.distributed.init_distributed``; call it before building the data to shard from
    the start) and leaves it at exit if it created it. ``model`` stays the plain module that
    hooks, EMA, checkpoints and export use; the DDP wrapper drives the training forward only.
    Give every rank the same hooks: some of them reduce over ranks. ``should_stop`` set, or a
    signal received, on any rank stops all of them after the same step (they agree after each
    one, on the CPU), so no rank is left waiting in the gradient all-reduce.

    Example:
        >>> data = ImageFolderData("shapes/", img_size=64, batch_size=32)
        >>> engine = Engine(build_model("resnet18", data.num_classes), data, max_epochs=5)
        >>> history = engine.fit()
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSource,
        *,
        max_epochs: int = 10,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        loss: LossFn | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        label_smoothing: float = 0.1,
        precision: str = "auto",
        ema_decay: float = 0.0,
        grad_clip: float = 0.0,
        accumulate: int = 1,
        device: str | torch.device = "auto",
        hooks: Sequence[Hook] = (),
        seed: int = 0,
        sanity_steps: int = 2,
        monitor: str = "val/acc",
        mode: str = "max",
        compile: bool = False,
        sync_bn: bool = False,
        args: dict[str, Any] | None = None,
        max_nonfinite: int = 5,
        val_every: float = 1.0,
    ) -> None:
        if accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        # Under torchrun, join the process group before the loaders below are sharded.
        if init_distributed(device):
            atexit.register(destroy_distributed)
        self.world_size, self.rank = get_world_size(), get_rank()
        seed_everything(rank_seed(seed, self.rank))  # ranks must not drop out in lockstep
        self.data = data
        self.device = device_for_rank(resolve_device(device))
        self.precision = resolve_precision(precision, self.device)
        self.max_epochs = max_epochs
        self.accumulate = accumulate
        self.grad_clip = grad_clip
        self.sanity_steps = sanity_steps
        self.monitor, self.mode = monitor, mode
        self.seed = seed
        self.args = dict(args or {})
        self.state = EngineState(max_epochs=max_epochs)

        # NHWC is faster for convolutions with cuDNN and with oneDNN on the CPU.
        self.channels_last = self.device.type in ("cuda", "cpu")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = place_model(model, self.device, self.channels_last, sync_bn)
        # DDP (under torchrun, of one rank too) wraps the training forward only; it broadcasts
        # rank 0's weights to all ranks here.
        ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp = DistributedDataParallel(self.model, device_ids=ids) if in_process_group() else None
        train_model = self._ddp or self.model
        # dynamic=False: the short last batch would otherwise make dynamo recompile with
        # symbolic shapes, and that slower graph then serves every full batch too.
        forward: Any = torch.compile(train_model, dynamic=False) if compile else train_model
        self._forward_model: nn.Module = forward
        self.ema = ModelEMA(self.model, ema_decay) if ema_decay > 0 else None

        self.loss_fn: LossFn = (
            loss if loss is not None else nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        )
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.to(self.device)
        self.optimizer = optimizer or default_optimizer(self.model, lr, weight_decay, self.device)
        self._train_loader = data.train_loader()
        self._val_loader = data.val_loader()
        self.steps_per_epoch = math.ceil(len(self._train_loader) / accumulate)  # type: ignore[arg-type]
        self.scheduler = scheduler or warmup_cosine(
            self.optimizer,
            round(warmup_epochs * self.steps_per_epoch),
            max_epochs * self.steps_per_epoch,
        )
        self._val_check = ValCheck(val_every, self.steps_per_epoch)
        self._amp_dtype = autocast_dtype(self.precision)
        fp16 = self.precision == "16-mixed"
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None

        self._to_device = BatchToDevice(
            self.device, getattr(data, "mean", None), getattr(data, "std", None), self.channels_last
        )
        self._mix = getattr(data, "batch_mix", None) or keep_batch  # MixUp/CutMix, data/mix.py
        self._confmat = confusion_counter(data.num_classes, self.device)
        self.hooks = list(hooks)
        self._plan = HookPlan(self.hooks)
        # Hooks draw their plots and reports on it; closed (flushed) when each entry point ends.
        self.artifacts = ArtifactWriter()
        self._pending_rng: dict[str, Any] | None = None
        self.resume_path: Path | None = None
        self._nonfinite = NonFiniteGuard(self.device, max_nonfinite, self.model)
        self._signal: int | None = None

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is rank 0 (always True without DDP): the one that writes files."""
        return is_global_zero()

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation, best-checkpoint selection and export use: EMA when enabled."""
        return self.ema.module if self.ema is not None else self.model

    # ----------------------------------------------------------------------------------- fit
    def fit(self, resume: str | Path | None = None) -> list[dict[str, float]]:
        """Train for ``max_epochs`` (or until a hook stops it) and return ``state.history``.

        Args:
            resume: a checkpoint file, or a run folder holding ``checkpoints/last.pt``.
        """
        s = self.state
        with self._plan.stage(self, "fit"):
            if resume is not None:
                self.load_checkpoint(resume)
                if len(s.history) >= self.max_epochs or s.stop_reason:
                    stopped = f", stopped: {s.stop_reason}" if s.stop_reason else ""
                    log.warning(
                        "the run in %s already finished (%d of %d epochs%s); nothing to train. "
                        "Raise --epochs to train further, or start a new run with another --out.",
                        resume, len(s.history), self.max_epochs, stopped,
                    )  # fmt: skip
                    return s.history
            s.max_epochs, s.should_stop, s.finished = self.max_epochs, False, False
            self._signal = None
            with stop_on_signals(self._on_signal):
                return self._fit(resume)

    def _fit(self, resume: str | Path | None) -> list[dict[str, float]]:
        s = self.state
        try:
            self._call("on_fit_start")
            if resume is None and self.sanity_steps > 0 and self._val_loader is not None:
                self._call("on_sanity_check_start")
                self._eval_loop("sanity", self._val_loader, limit=self.sanity_steps)
                self._call("on_sanity_check_end")
            if self._pending_rng is not None:
                set_rng_state(self._pending_rng)
                self._pending_rng = None
            self._call("on_train_start")
            for epoch in range(len(s.history), self.max_epochs):
                s.epoch = epoch
                self._train_epoch()
                if self._agree_to_stop():
                    s.stop_reason = s.stop_reason or "stopped by a hook"
                    break
            s.finished = True
            self._call("on_train_end")
            self._call("on_fit_end")
        except BaseException as e:
            self._plan.call_on_exception(self, e)
            raise
        finally:
            s.phase = "idle"
            self.close()  # every plot a hook asked for exists, no worker is left, when fit returns
        barrier()  # when fit returns on any rank, rank 0's files are all written
        return s.history

    def validate(self) -> dict[str, float]:
        """Run the validation split once and return its metrics."""
        try:
            with self._plan.stage(self, "validate"):
                return self._eval_loop("val", self._val_loader)
        finally:
            self.close()

    def test(self) -> dict[str, float]:
        """Run the test split (falls back to val when there is none) and return its metrics."""
        loader = self.data.test_loader()
        if loader is None:
            log.warning("no test split; testing on the validation split")
            loader = self._val_loader
        try:
            with self._plan.stage(self, "test"):
                return self._eval_loop("test", loader)
        finally:
            end_workers(loader)
            self.close()

    def predict(self, source: PredictSource, batch_size: int | None = None) -> torch.Tensor:
        """Class probabilities (N, C) on the CPU; see ``trainer.predict.predict``."""
        try:
            return predict(self, source, batch_size)
        finally:
            end_workers(source)  # a loader's workers; anything else is left as it is

    def close(self) -> None:
        """End the workers of the engine's loaders and flush the hooks' plots. Each entry point
        does it when it returns or raises; the engine stays usable (new workers start)."""
        end_workers(self._train_loader)
        end_workers(self._val_loader)
        self.artifacts.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- train epoch
    def _train_epoch(self) -> None:
        s = self.state
        s.phase, s.metrics = "train", {}
        sampler: Any = getattr(self._train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(s.epoch)
        self.model.train()
        s.num_batches = len(self._train_loader)  # type: ignore[arg-type]
        tally, first_step = TrainTally(self.device), s.step
        t0 = time.perf_counter()
        self._call("on_train_epoch_start")
        for batch_idx, batch in enumerate(self._train_loader):
            s.batch_idx = batch_idx
            batch = self._to_device(batch)  # hooks get it as the model does (as in Lightning)
            self._call("on_train_batch_start", batch, batch_idx)
            outputs = self._train_step(batch, batch_idx)
            tally.update(outputs["loss"], outputs["logits"], outputs["targets"], outputs["finite"])
            self._call("on_train_batch_end", outputs, batch, batch_idx)
            if self._val_check.due(s.step, s.step - first_step):
                self._validate_mid_epoch()
            if self._agree_to_stop():  # a signal raises: no validation or checkpoint of a part
                break
        train_time = time.perf_counter() - t0
        loss, acc, seen = tally.compute()  # one reduction and one host read per epoch
        self._nonfinite.end_epoch(s)  # records and logs the steps skipped this epoch
        s.metrics.update({"train/loss": loss, "train/acc": acc})
        s.metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        s.metrics["train/img_s"] = seen / max(time.perf_counter() - t0, 1e-9)
        if not self._val_check.ran_at(s.step):  # a stop right after a mid-epoch check
            self._eval_loop("val", self._val_loader)
        s.metrics["epoch_time"] = train_time + s.metrics.get("val/time", 0.0)
        s.phase = "train"
        self._end_epoch()
        self._call("on_train_epoch_end")

    def _train_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Forward, loss, zero_grad on the first micro-batch of a step (after the forward, as
        Lightning does), backward; the optimizer step on the last micro-batch of a step."""
        x, y = batch
        x, target = self._mix(x, y, (self.state.epoch, batch_idx))  # soft targets if mixing
        stepping = (batch_idx + 1) % self.accumulate == 0 or batch_idx + 1 == self.state.num_batches
        with self._grad_sync(stepping):
            self._nonfinite.before_forward()  # a skipped step puts the BatchNorm stats back
            with self._autocast():
                logits = self._forward_model(x)
                loss = self.loss_fn(logits, target)
            finite = finite_flag(loss.detach())
            self._nonfinite.observe(finite)
            if batch_idx % self.accumulate == 0:
                self._call("on_before_zero_grad", self.optimizer)
                self.optimizer.zero_grad(set_to_none=True)
            self._call("on_before_backward", loss)
            self._backward(loss / self.accumulate if self.accumulate > 1 else loss)
            self._call("on_after_backward")
        if stepping:
            self._optimizer_step()
        return {"loss": loss.detach(), "logits": logits.detach(), "targets": y, "finite": finite}

    def _end_epoch(self) -> None:
        """Append this epoch's row to history and track the best epoch by ``monitor``."""
        self.state.history.append(track_best(self.state, self.monitor, self.mode))

    def _validate_mid_epoch(self) -> None:
        """A ``val_every`` check inside the epoch. Hooks see ``state.mid_epoch``: best.pt may be
        written then, the resumable last.pt only at the epoch end. Best tracking follows it."""
        s = self.state
        where, s.mid_epoch = (s.num_batches, s.batch_idx), True
        self._eval_loop("val", self._val_loader)
        (s.num_batches, s.batch_idx), s.mid_epoch, s.phase = where, False, "train"
        track_best(s, self.monitor, self.mode)

    def _grad_sync(self, stepping: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP all-reduces gradients in backward; micro-batches that only accumulate skip it."""
        if self._ddp is None or stepping:
            return contextlib.nullcontext()
        return self._ddp.no_sync()

    def _backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _optimizer_step(self) -> None:
        opt = self.optimizer
        if self.scaler is not None:
            self.scaler.unscale_(opt)  # hooks and clipping see true gradients
        self._call("on_before_optimizer_step", opt)
        finite = self._nonfinite.finite
        if self.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
            finite = finite & torch.isfinite(norm)
        if self._ddp is not None:  # one rank's NaN must skip the step on every rank
            finite = all_reduce_sum((~finite).to(torch.int32)) == 0
        skipped = (~finite).float()  # 1.0: the step is skipped (the optimizer's found_inf)
        if self.scaler is not None:
            self.scaler.step(opt)  # the scaler skips steps with non-finite gradients itself
            self.scaler.update()
        elif getattr(opt, "_step_supports_amp_scaling", False):
            # Fused optimizers (the default AdamW) skip on the device as under GradScaler.
            opt.grad_scale, opt.found_inf = None, skipped  # type: ignore[attr-defined]
            opt.step()
            del opt.grad_scale, opt.found_inf  # type: ignore[attr-defined]
        elif finite.item():  # another optimizer: one host read per step decides
            opt.step()
        self.scheduler.step()
        self._nonfinite.restore(finite)
        if self.ema is not None:
            self.ema.update(self.model, apply=finite)
        self.state.step += 1
        self._nonfinite.stepped(skipped, self.state.step, self.state.epoch)

    def _agree_to_stop(self) -> bool:
        """After each step and epoch: raise ``Interrupted`` if a signal came, else whether a
        hook asked to stop. Under DDP the ranks agree first (one tiny all-reduce on the CPU,
        no device sync), so a signal to any rank stops every rank at the same step, and none
        is left waiting in the next gradient all-reduce."""
        s = self.state
        if self.world_size > 1:
            signum, stop = max_over_ranks([self._signal or 0, int(s.should_stop)])
            self._signal, s.should_stop = signum or None, bool(stop)
        if self._signal is not None:
            raise Interrupted(self._signal)
        return s.should_stop

    def _on_signal(self, signum: int) -> None:
        """SIGINT/SIGTERM: stop after the current step (see ``trainer.signals``)."""
        # No stop_reason: that marks a finished run, and an interrupted one is not.
        self._signal = signum
        self.state.should_stop = True
        log.warning(
            "%s: finishing the current step, then saving checkpoints/interrupted.pt; "
            "press Ctrl-C again to exit at once", signal.Signals(signum).name,
        )  # fmt: skip

    # --------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _eval_loop(
        self, phase: str, loader: Iterable[Any] | None, limit: int | None = None
    ) -> dict[str, float]:
        """Validation ("sanity", "val") or test ("test"): hooks of that kind, metrics per phase."""
        if loader is None:
            return {}
        s = self.state
        kind = "test" if phase == "test" else "validation"
        s.phase = phase
        model = self.eval_model
        broadcast_buffers(model)  # every rank evaluates the BatchNorm statistics rank 0 saves
        was_training = model.training
        model.eval()
        tally = EvalTally(self.data.num_classes, self.device)
        t0 = time.perf_counter()
        s.num_batches = len(loader) if limit is None else min(limit, len(loader))  # type: ignore[arg-type]
        self._call(f"on_{kind}_start")
        self._call(f"on_{kind}_epoch_start")
        for batch_idx, batch in enumerate(loader):
            if limit is not None and batch_idx >= limit:
                break
            s.batch_idx = batch_idx
            batch = x, y = self._to_device(batch)
            self._call(f"on_{kind}_batch_start", batch, batch_idx)
            with self._autocast():
                logits = model(x)
            logits = logits.float()
            loss = self.loss_fn(logits, y)
            tally.update(loss, logits, y)
            outputs = {"loss": loss, "logits": logits, "targets": y}
            self._call(f"on_{kind}_batch_end", outputs, batch, batch_idx)
        metrics = {} if phase == "sanity" else self._eval_metrics(phase, tally, t0)
        self._call(f"on_{kind}_epoch_end")
        self._call(f"on_{kind}_end")
        model.train(was_training)
        return metrics

    def _eval_metrics(self, phase: str, tally: EvalTally, t0: float) -> dict[str, float]:
        """Reduce the pass's counts over ranks; fill ``state.metrics``, ``per_class_acc``,
        ``confusion_matrix`` and ``calibration``, which every rank then holds."""
        s, prefix = self.state, "test" if phase == "test" else "val"
        counts = tally.compute(self._confmat)
        metrics = counts.summary(prefix)
        if not metrics:
            return {}
        metrics[f"{prefix}/time"] = time.perf_counter() - t0
        s.per_class_acc = counts.per_class_accuracy(self.data.classes)
        s.confusion_matrix, s.calibration = counts.confusion, counts.calibration
        s.metrics.update(metrics)
        return metrics

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    # ------------------------------------------------------------------------------- hooks
    def _call(self, method: str, *args: Any) -> None:
        self._plan.call(method, self, *args)

    def describe_hooks(self) -> str:
        """Print and return the resolved hook plan: order, hook, and the methods it runs."""
        text = describe_hook_plan(self.hooks)
        print(text)
        return text

    # -------------------------------------------------------------------------- checkpoints
    def checkpoint_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (``torch.load(weights_only=True)`` reads it). Under
        DDP every rank calls it: it gathers each rank's RNG state (``rng_per_rank``)."""
        sampler: Any = getattr(self._train_loader, "sampler", None)
        rng = get_rng_state()
        ckpt: dict[str, Any] = {
            "version": 1,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "state": self.state.state_dict(),
            "sampler": sampler.state_dict() if hasattr(sampler, "state_dict") else None,
            "rng": rng,
            "hooks": {key: h.state_dict() for key, h in hook_keys(self.hooks).items()},
            "classes": list(self.data.classes),
            "args": self.args,
            "precision": self.precision,
        }
        if self.world_size > 1:
            ckpt["rng_per_rank"] = all_gather_object(rng)
        self._call("on_save_checkpoint", ckpt)
        return ckpt

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write ``checkpoint_dict()`` atomically to ``path``; under DDP all ranks call, rank 0 writes."""
        ckpt = self.checkpoint_dict()
        return save_checkpoint(ckpt, path) if self.is_global_zero else Path(path)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restore a checkpoint written by ``save_checkpoint``; the RNG is restored at fit."""
        ckpt = load_checkpoint(path)
        check_resumable(ckpt, self.data.classes, path)
        self.resume_path = checkpoint_file(path)
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state.load_state_dict(ckpt["state"])
        sampler: Any = getattr(self._train_loader, "sampler", None)
        if ckpt.get("sampler") is not None and hasattr(sampler, "load_state_dict"):
            sampler.load_state_dict(ckpt["sampler"])
        keys = hook_keys(self.hooks)
        for key, hook_state in ckpt.get("hooks", {}).items():
            if key in keys:
                keys[key].load_state_dict(hook_state)
        self._pending_rng = rank_rng_state(ckpt, self.rank, self.world_size)
        if self._pending_rng is None and (self.world_size > 1 or "rng_per_rank" in ckpt):
            # Saved by another number of processes: the draw and the augmentation (seeded per
            # image) are still exact, but the ranks' own streams cannot continue: new ones.
            log.warning(
                "%s was saved by %d process(es), this run has %d: data order and augmentation "
                "are exact, other randomness (dropout) is reseeded",
                path, len(ckpt.get("rng_per_rank") or [None]), self.world_size,
            )  # fmt: skip
            seed_everything(rank_seed(self.seed + len(self.state.history), self.rank))
        self._call("on_load_checkpoint", ckpt)
        return ckpt

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
Each entry point ends its loaders' workers on its way out (``close()``; a ``with`` block too).

Under torchrun (``torchrun --nproc_per_node N tools/train.py ...``) the same loop runs in every
process: the engine joins the process group (and leaves it at exit if it joined it; call
``trainer.distributed.init_distributed`` first to shard the data from the start), trains through
DistributedDataParallel, each rank validates its shard of the split and the metrics are summed
over ranks, so every rank holds the same ``state``. Give every rank the same hooks (some reduce
over ranks); those that write files or print do so on rank 0 only. A stop asked on any rank
stops every rank after the same step (``trainer.signals.StopRequests``).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.artifacts import ArtifactWriter
from trainer.batch import BatchToDevice
from trainer.checkpoint import checkpoint_file, save_checkpoint
from trainer.data.mix import keep_batch
from trainer.data.source import DataSource
from trainer.data.workers import end_workers
from trainer.device import autocast, autocast_dtype, place_model, resolve_device, resolve_precision
from trainer.distributed import (
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    destroy_distributed,
    device_for_rank,
    get_rank,
    get_world_size,
    grad_sync,
    init_distributed,
    is_global_zero,
    rank_seed,
    training_forward,
)
from trainer.ema import ModelEMA
from trainer.hook import Hook, HookPlan, describe_hook_plan
from trainer.metrics import LossFn, confusion_counter, track_best
from trainer.nonfinite import NonFiniteGuard, finite_flag
from trainer.optim import default_optimizer, warmup_cosine
from trainer.predict import PredictBatches, PredictSource
from trainer.resume import already_finished, engine_checkpoint, restore_engine
from trainer.rng import seed_everything, set_rng_state
from trainer.signals import StopRequests, stop_on_signals
from trainer.state import EngineState
from trainer.step import backward, clip, optimizer_step, unscale
from trainer.tasks import task_of
from trainer.val_check import ValCheck

log = logging.getLogger("trainer")

Score = Callable[[torch.Tensor, tuple[torch.Tensor, ...]], dict[str, torch.Tensor]]


class Engine:
    """Trains, validates, tests and predicts with a classifier; hooks watch and steer.

    Args:
        model: an ``nn.Module`` mapping normalised NCHW float images to logits.
        data: batches of ``(images, targets)``; uint8 images are scaled and normalised on the
            device with ``data.mean`` / ``data.std``, float images are used as they come.
        max_epochs: epochs to train.
        optimizer: defaults to AdamW (fused on CUDA), no weight decay on biases and norms.
        scheduler: defaults to linear warmup then cosine decay, stepped per optimizer step.
        loss: the task's (``trainer.task``): label-smoothed (binary, multi-label) cross-entropy.
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
        seed: seeds Python, NumPy and torch here (the model exists by then: call
            ``trainer.seed_everything`` before building it for the same initial weights).
        sanity_steps: validation batches run before training to catch errors early; 0 skips.
        monitor: the metric that picks ``state.best``; None: val/acc (multi-label data: val/mAP).
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
        to_device: a loader's batch on the device, uint8 images normalised there, as the model
            takes them: ``(images, targets)``, or ``(images,)`` for images alone (a callable).

    Signals: during ``fit`` SIGINT and SIGTERM finish the current step, then raise
    ``trainer.errors.Interrupted`` (hooks get ``on_exception``; ``CheckpointHook`` saves
    ``checkpoints/interrupted.pt``). A second signal exits at once.

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
        monitor: str | None = None,
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
        self.max_epochs, self.accumulate, self.grad_clip = max_epochs, accumulate, grad_clip
        self.sanity_steps, self.seed = sanity_steps, seed
        self.task = task_of(data)  # multi-class or multi-label: loss, metrics, activation
        self.monitor, self.mode = self.task.monitor(monitor), mode
        self._monitor_given = monitor is not None  # one that is missing is then an error
        self.args = dict(args or {})
        self.state = EngineState(max_epochs=max_epochs)

        # NHWC is faster for convolutions with cuDNN and with oneDNN on the CPU.
        self.channels_last = self.device.type in ("cuda", "cpu")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = place_model(model, self.device, self.channels_last, sync_bn)
        # DDP (under torchrun) and torch.compile drive the training forward only.
        self._ddp, self._forward_model = training_forward(self.model, self.device, compile)
        self.ema = ModelEMA(self.model, ema_decay) if ema_decay > 0 else None

        self.loss_fn: LossFn = loss if loss is not None else self.task.loss(label_smoothing)
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.to(self.device)
        self.optimizer = optimizer or default_optimizer(self.model, lr, weight_decay, self.device)
        self._train_loader = data.train_loader()
        self._val_loader = data.val_loader()
        self.steps_per_epoch = steps = math.ceil(len(self._train_loader) / accumulate)  # type: ignore[arg-type]
        self.scheduler = scheduler or warmup_cosine(
            self.optimizer, round(warmup_epochs * steps), max_epochs * steps
        )
        self._val_check = ValCheck(val_every, self.steps_per_epoch)
        self._amp_dtype = autocast_dtype(self.precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "16-mixed" else None

        self.to_device = BatchToDevice(
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
        self._stop = StopRequests(self.state, self.world_size)

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is rank 0 (always True without DDP): the one that writes files."""
        return is_global_zero()

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation, best-checkpoint selection and export use: EMA when enabled."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def train_loader(self) -> Iterable[Any]:
        """The training loader, built once: its sampler's position is saved in checkpoints."""
        return self._train_loader

    @property
    def val_loader(self) -> Iterable[Any] | None:
        """The validation loader, built once (``indices`` after each batch, where it names them)."""
        return self._val_loader

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The run's mixed precision around a forward pass (nothing at precision "32")."""
        return autocast(self.device, self._amp_dtype)

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training forward (through DDP and ``torch.compile`` when on) under autocast:
        the logits and the loss against the targets ``y`` (soft ones too)."""
        with self.autocast():
            logits = self._forward_model(x)
            return logits, self.loss_fn(logits, y)

    # ----------------------------------------------------------------------------------- fit
    def fit(self, resume: str | Path | None = None) -> list[dict[str, float]]:
        """Train for ``max_epochs`` (or until a hook stops it) and return ``state.history``;
        ``resume``: a checkpoint file, or a run folder holding ``checkpoints/last.pt``."""
        s = self.state
        with self._entry("fit"):
            if resume is not None:
                self.load_checkpoint(resume)
                if already_finished(s, self.max_epochs, resume):  # logs what to do instead
                    return s.history
            s.max_epochs, s.should_stop, s.finished = self.max_epochs, False, False
            self._stop.signal = None
            with stop_on_signals(self._stop.on_signal):
                self._fit(resume)
        barrier()  # when fit returns on any rank, rank 0's files are all written
        return s.history

    def _fit(self, resume: str | Path | None) -> None:
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
                if self._stop.agree():
                    s.stop_reason = s.stop_reason or "stopped by a hook"
                    break
            s.finished = True
            self._call("on_train_end")
            self._call("on_fit_end")
        except BaseException as e:
            self._plan.call_on_exception(self, e)
            raise

    def validate(self) -> dict[str, float]:
        """Run the validation split once and return its metrics."""
        with self._entry("validate"):
            return self._eval_loop("val", self._val_loader)

    def test(self) -> dict[str, float]:
        """Run the test split (falls back to val when there is none) and return its metrics."""
        loader = self.data.test_loader()
        if loader is None:
            log.warning("no test split; testing on the validation split")
            loader = self._val_loader
        try:
            with self._entry("test"):
                return self._eval_loop("test", loader)
        finally:
            end_workers(loader)

    def predict(self, source: PredictSource, batch_size: int | None = None, tta: str = "none") -> torch.Tensor:
        """Class probabilities ``(N, C)`` (multi-label: sigmoids) on the CPU, a row per image of
        ``source`` (a folder, paths and PIL images, or a loader; see ``trainer.predict``, also for
        ``tta="flip"``), in order; an undecodable file's row is NaN (a warning names it)."""
        batches = PredictBatches(self.data, source, batch_size, tta=tta, engine=self)
        try:
            with self._entry("predict"):
                self.run_eval("predict", batches, batches.score)
        finally:
            end_workers(source)  # a loader's workers; anything else is left as it is
        return batches.result(self.data.num_classes)

    def close(self) -> None:
        """End the loaders' workers and flush the hooks' plots (every entry point does, on its
        way out); the engine stays usable."""
        end_workers(self._train_loader)
        end_workers(self._val_loader)
        self.artifacts.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _entry(self, stage: str) -> Iterator[None]:
        """``setup(stage)`` ... ``teardown(stage)``; after it, even after an error, the phase is
        idle, no loader worker is left and every file a hook asked for is written."""
        try:
            with self._plan.stage(self, stage):
                yield
        finally:
            self.state.phase = "idle"
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
        tally, first_step = self.task.train_tally(self.device), s.step
        t0 = time.perf_counter()
        self._call("on_train_epoch_start")
        for batch_idx, batch in enumerate(self._train_loader):
            s.batch_idx = batch_idx
            batch = self.to_device(batch)  # hooks get it as the model does (as in Lightning)
            self._call("on_train_batch_start", batch, batch_idx)
            outputs = self._train_step(batch, batch_idx)
            tally.update(outputs["loss"], outputs["logits"], outputs["targets"], outputs["finite"])
            self._call("on_train_batch_end", outputs, batch, batch_idx)
            if self._val_check.due(s.step, s.step - first_step):
                self._validate_mid_epoch()
            if self._stop.agree():  # a signal raises: no validation or checkpoint of a part
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
        s.history.append(track_best(s, self.monitor, self.mode, self._monitor_given))
        self._call("on_train_epoch_end")

    def _train_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Forward, loss, zero_grad on the first micro-batch of a step (after the forward, as
        Lightning does), backward; the optimizer step on the last micro-batch of a step."""
        x, y = batch
        x, target = self._mix(x, y, (self.state.epoch, batch_idx))  # soft targets if mixing
        stepping = (batch_idx + 1) % self.accumulate == 0 or batch_idx + 1 == self.state.num_batches
        with grad_sync(self._ddp, stepping):  # DDP all-reduces in the stepping backward
            self._nonfinite.before_forward()  # a skipped step puts the BatchNorm stats back
            logits, loss = self.forward_loss(x, target)
            finite = finite_flag(loss.detach())
            self._nonfinite.observe(finite)
            if batch_idx % self.accumulate == 0:
                self._call("on_before_zero_grad", self.optimizer)
                self.optimizer.zero_grad(set_to_none=True)
            self._call("on_before_backward", loss)
            backward(loss / self.accumulate if self.accumulate > 1 else loss, self.scaler)
            self._call("on_after_backward")
        if stepping:
            self._optimizer_step()
        return {"loss": loss.detach(), "logits": logits.detach(), "targets": y, "finite": finite}

    def _validate_mid_epoch(self) -> None:
        """A ``val_every`` check inside the epoch. Hooks see ``state.mid_epoch``: best.pt may be
        written then, the resumable last.pt only at the epoch end. Best tracking follows it."""
        s = self.state
        where, s.mid_epoch = (s.num_batches, s.batch_idx), True
        self._eval_loop("val", self._val_loader)
        (s.num_batches, s.batch_idx), s.mid_epoch, s.phase = where, False, "train"
        track_best(s, self.monitor, self.mode, self._monitor_given)

    def _optimizer_step(self) -> None:
        """Unscale, clip, step (skipped where the loss or the gradients are not finite on any
        rank: ``trainer.step``), then the scheduler and EMA."""
        unscale(self.optimizer, self.scaler)  # hooks and clipping see true gradients
        self._call("on_before_optimizer_step", self.optimizer)
        finite = clip(self.model, self.grad_clip, self._nonfinite.finite)
        if self._ddp is not None:  # one rank's NaN must skip the step on every rank
            finite = all_reduce_sum((~finite).to(torch.int32)) == 0
        optimizer_step(self.optimizer, self.scaler, finite)
        self.scheduler.step()
        self._nonfinite.restore(finite)
        if self.ema is not None:
            self.ema.update(self.model, apply=finite)
        self.state.step += 1
        self._nonfinite.stepped((~finite).float(), self.state.step, self.state.epoch)

    # --------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def run_eval(
        self, phase: str, loader: Iterable[Any], score: Score, *,
        end: Callable[[], None] | None = None, limit: int | None = None,
    ) -> None:  # fmt: skip
        """The one loop over evaluation batches (validation, test, predict): each batch to the
        device, through ``eval_model`` in eval mode under ``autocast``; ``score(logits, batch)``
        returns the outputs the batch-end hooks get; ``end`` runs before the epoch-end hooks,
        which read what it records. Hooks of ``phase``'s kind: validation ("sanity", "val"),
        "test" or "predict". ``limit``: batches at most."""
        s, model = self.state, self.eval_model
        kind = {"sanity": "validation", "val": "validation"}.get(phase, phase)
        s.phase = phase
        total = len(loader) if isinstance(loader, Sized) else 0
        s.num_batches = total if limit is None else min(limit, total)
        was_training = model.training
        model.eval()
        try:
            self._call(f"on_{kind}_start")
            self._call(f"on_{kind}_epoch_start")
            for batch_idx, raw in enumerate(itertools.islice(loader, limit)):
                s.batch_idx = batch_idx
                batch = self.to_device(raw)
                self._call(f"on_{kind}_batch_start", batch, batch_idx)
                with self.autocast():
                    logits = model(batch[0])
                outputs = score(logits.float(), batch)
                self._call(f"on_{kind}_batch_end", outputs, batch, batch_idx)
            if end is not None:
                end()
            self._call(f"on_{kind}_epoch_end")
            self._call(f"on_{kind}_end")
        finally:
            model.train(was_training)

    def _eval_loop(
        self, phase: str, loader: Iterable[Any] | None, limit: int | None = None
    ) -> dict[str, float]:
        """Validation ("sanity", "val") or test ("test"); returns the metrics, which every rank
        holds in ``state`` before the epoch-end hooks run (none for the sanity check)."""
        if loader is None:
            return {}
        broadcast_buffers(self.eval_model)  # every rank evaluates the statistics rank 0 saves
        classes, confmat = self.data.classes, self._confmat
        scorer = self.task.scorer(self.state, phase, classes, self.loss_fn, self.device, confmat)
        self.run_eval(phase, loader, scorer.score, end=scorer.end, limit=limit)
        return scorer.metrics

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
        """Everything to resume exactly (``trainer.resume``); under DDP every rank calls it."""
        ckpt = engine_checkpoint(self)
        self._call("on_save_checkpoint", ckpt)
        return ckpt

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write ``checkpoint_dict()`` atomically to ``path``; under DDP all ranks call, rank 0 writes."""
        ckpt = self.checkpoint_dict()
        return save_checkpoint(ckpt, path) if self.is_global_zero else Path(path)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restore a ``save_checkpoint`` file (``trainer.resume``); the RNG comes back at fit."""
        ckpt, self._pending_rng = restore_engine(self, path)
        self.resume_path = checkpoint_file(path)
        self._call("on_load_checkpoint", ckpt)
        return ckpt

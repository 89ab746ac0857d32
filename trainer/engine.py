"""Engine: the training loop, written out, with hooks called at each point of it.

One fit, top to bottom::

    fit():
        [resume: load the checkpoint into model, optimizer, scheduler, EMA, state, hooks]
        on_fit_start
        sanity validation (2 batches, phase "sanity"), unless resuming
        for epoch in range(start, max_epochs):
            train_epoch(): on_train_epoch_start, per batch: forward, loss, backward, and every
                `accumulate` batches an optimizer step (clip, step, scheduler, EMA), then
                validation (phase "val"), epoch row appended to history, on_train_epoch_end
            stop if a hook set state.should_stop (on any rank)
        on_fit_end

Everything the loop knows lives in ``engine.state``; files, plots and the progress bar are hooks.

Under torchrun (``torchrun --nproc_per_node N tools/train.py ...``) the same loop runs in every
process: the engine joins the process group, trains through DistributedDataParallel, each rank
validates its shard of the split and the metrics are summed over ranks, so every rank holds the
same ``state``. Hooks run on every rank; those that write files or print do so on rank 0 only.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.device import autocast_dtype, resolve_device, resolve_precision
from trainer.distributed import (
    all_gather_object,
    all_reduce_sum,
    any_rank,
    barrier,
    destroy_distributed,
    device_for_rank,
    get_rank,
    get_world_size,
    init_distributed,
    rank_seed,
)
from trainer.ema import ModelEMA
from trainer.errors import CheckpointError, ConfigError, Interrupted, NonFiniteLossError
from trainer.gpu_decode import EncodedBatch, decode_batch
from trainer.hook import HOOK_METHODS, Hook
from trainer.state import EngineState

log = logging.getLogger("trainer")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Optimizer steps between host reads of the non-finite-loss counters (one tiny sync each).
NONFINITE_CHECK_EVERY = 50


class DataSource(Protocol):
    """What the engine needs from ``data`` (``ImageFolderData`` is one)."""

    classes: list[str]
    num_classes: int

    def train_loader(self) -> Iterable[Any]: ...
    def val_loader(self) -> Iterable[Any] | None: ...
    def test_loader(self) -> Iterable[Any] | None: ...


class Engine:
    """Trains, validates and tests a classifier; hooks watch and steer.

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
        compile: wrap the model in ``torch.compile`` for the training forward pass.
        sync_bn: under DDP, turn BatchNorm layers into SyncBatchNorm (CUDA only), so the
            statistics span the global batch; useful when the per-GPU batch is small.
        args: the run's configuration, stored in checkpoints so a run can be replayed.
        max_nonfinite: a NaN or infinite loss skips its optimizer step (and the EMA update);
            this many skipped steps in a row end the fit with ``NonFiniteLossError``. The
            skips are counted in ``state.metrics["train/skipped_steps"]``.

    Signals: during ``fit`` SIGINT and SIGTERM finish the current step, then raise
    ``trainer.errors.Interrupted`` (hooks get ``on_exception``; ``CheckpointHook`` saves
    ``checkpoints/interrupted.pt``). A second signal exits at once.

    Distributed: started by torchrun, the engine joins the process group itself (see
    ``trainer.distributed.init_distributed``; call it before building the data to shard from
    the start) and leaves it at exit if it created it. ``model`` stays the plain module that
    hooks, EMA, checkpoints and export use; the DDP wrapper drives the training forward only.
    Give every rank the same hooks: some of them reduce over ranks. ``should_stop`` set on any
    rank stops all of them at the end of the epoch (a mid-epoch stop would leave the other
    ranks waiting in the gradient all-reduce).

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
        self.model = model.to(self.device)
        if sync_bn and self.world_size > 1:
            if self.device.type != "cuda":
                raise ConfigError(
                    f"sync_bn needs CUDA GPUs (SyncBatchNorm has no {self.device.type} kernel); "
                    "drop --sync-bn, or train on GPUs."
                )
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # DDP wraps the training forward only; it broadcasts rank 0's weights to all ranks here.
        self._ddp: DistributedDataParallel | None = None
        train_model: nn.Module = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids)
            train_model = self._ddp
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
        self._amp_dtype = autocast_dtype(self.precision)
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if self.precision == "16-mixed" else None
        )

        mean, std = getattr(data, "mean", None), getattr(data, "std", None)
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None
        if mean is not None and std is not None:
            m = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
            s = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
            # (x / 255 - mean) / std as one multiply-add.
            self._norm = (1.0 / (255.0 * s), -m / s)

        n = data.num_classes
        # Imported here: torchmetrics pulls in matplotlib, too slow for `import trainer`.
        from torchmetrics.classification import MulticlassConfusionMatrix

        # No torchmetrics sync: the engine sums all its validation counts in one all-reduce.
        confmat = MulticlassConfusionMatrix(n, validate_args=False, sync_on_compute=False)
        self._confmat = confmat.to(self.device)
        self.hooks = list(hooks)
        self._plan = resolve_hook_plan(self.hooks)
        self._pending_rng: dict[str, Any] | None = None
        self.max_nonfinite = max_nonfinite
        # Non-finite losses are tracked on the device: whether this optimizer step's
        # micro-batches were all finite, skips this epoch, and skips in a row.
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)
        self._skipped = torch.zeros((), dtype=torch.long, device=self.device)
        self._skipped_run = torch.zeros((), dtype=torch.long, device=self.device)
        self._signal: int | None = None

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is rank 0 (always True without DDP): the one that writes files."""
        return self.rank == 0

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
        if resume is not None:
            self.load_checkpoint(resume)
            if len(s.history) >= self.max_epochs or s.stop_reason:
                log.warning(
                    "the run in %s already finished (%d of %d epochs%s); nothing to train. "
                    "Raise --epochs to train further, or start a new run with another --out.",
                    resume,
                    len(s.history),
                    self.max_epochs,
                    f", stopped: {s.stop_reason}" if s.stop_reason else "",
                )
                return s.history
        s.max_epochs, s.should_stop, s.finished = self.max_epochs, False, False
        self._signal = None
        with self._signal_handlers(), _gc_frozen():
            return self._fit(resume)

    def _fit(self, resume: str | Path | None) -> list[dict[str, float]]:
        s = self.state
        try:
            self._call("on_fit_start")
            if resume is None and self.sanity_steps > 0:
                self._eval_loop("sanity", self._val_loader, limit=self.sanity_steps)
            if self._pending_rng is not None:
                set_rng_state(self._pending_rng)
                self._pending_rng = None
            for epoch in range(len(s.history), self.max_epochs):
                s.epoch = epoch
                self._train_epoch()
                if self._signal is not None:  # under DDP the epoch ran to its end first
                    raise Interrupted(self._signal)
                # All ranks leave together, or the others would wait in the next all-reduce.
                s.should_stop = any_rank(s.should_stop, self.device)
                if s.should_stop:
                    s.stop_reason = s.stop_reason or "stopped by a hook"
                    break
            s.finished = True
            self._call("on_fit_end")
            barrier()  # when fit returns on any rank, rank 0's files are all written
        except BaseException as e:
            self._call_on_exception(e)
            raise
        finally:
            s.phase = "idle"
        return s.history

    def validate(self) -> dict[str, float]:
        """Run the validation split once and return its metrics."""
        return self._eval_loop("val", self._val_loader)

    def test(self) -> dict[str, float]:
        """Run the test split (falls back to val when there is none) and return its metrics."""
        loader = self.data.test_loader()
        if loader is None:
            log.warning("no test split; testing on the validation split")
            loader = self._val_loader
        return self._eval_loop("test", loader)

    # ------------------------------------------------------------------------- train epoch
    def _train_epoch(self) -> None:
        s = self.state
        s.phase, s.metrics = "train", {}
        sampler: Any = getattr(self._train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(s.epoch)
        self.model.train()
        s.num_batches = len(self._train_loader)  # type: ignore[arg-type]
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        counted = torch.zeros((), device=self.device, dtype=torch.long)  # finite-loss images
        seen = 0
        t0 = time.perf_counter()
        self._call("on_train_epoch_start")
        for batch_idx, batch in enumerate(self._train_loader):
            s.batch_idx = batch_idx
            self._call("on_train_batch_start", batch, batch_idx)
            x, y = self._to_device(batch)
            stepping = (batch_idx + 1) % self.accumulate == 0 or batch_idx + 1 == s.num_batches
            with self._grad_sync(stepping):
                with self._autocast():
                    logits = self._forward_model(x)
                    loss = self.loss_fn(logits, y)
                self._finite.logical_and_(torch.isfinite(loss.detach()))
                self._call("on_before_backward", loss)
                self._backward(loss / self.accumulate if self.accumulate > 1 else loss)
                self._call("on_after_backward")
            if stepping:
                self._optimizer_step()
            # Device-side sums only: the host reads them once, after the epoch. A batch whose
            # loss is not finite (its step was skipped) counts in neither loss nor accuracy.
            loss = loss.detach()
            logits = logits.detach()
            finite = torch.isfinite(loss)
            loss_sum.add_(torch.where(finite, loss, 0.0), alpha=y.shape[0])
            correct += ((logits.argmax(1) == y) & finite).sum()
            counted += finite * y.shape[0]
            seen += y.shape[0]
            self._call(
                "on_train_batch_end",
                {"loss": loss, "logits": logits, "targets": y},
                batch,
                batch_idx,
            )
            if s.should_stop and self._ddp is None:
                break
        if self._signal is not None and self._ddp is None:
            raise Interrupted(self._signal)  # no validation or epoch-end checkpoint of a part
        train_time = time.perf_counter() - t0
        # One reduction and one host read per epoch: the metrics of all ranks' batches.
        counts = [loss_sum, correct, counted, torch.tensor(seen, device=self.device)]
        totals = all_reduce_sum(torch.stack([c.double() for c in counts]))
        loss_total, correct_total, counted_total, seen_total = totals.tolist()
        skipped = self._check_nonfinite()
        if skipped:
            s.metrics["train/skipped_steps"] = skipped
            log.warning(
                "epoch %d: skipped %d optimizer step(s) with a NaN or infinite loss",
                s.epoch + 1,
                skipped,
            )
        self._skipped.zero_()
        # Over the batches with a finite loss; NaN only when there was none.
        s.metrics["train/loss"] = loss_total / counted_total if counted_total else math.nan
        s.metrics["train/acc"] = correct_total / counted_total if counted_total else math.nan
        s.metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        s.metrics["train/img_s"] = seen_total / max(time.perf_counter() - t0, 1e-9)
        if self._val_loader is not None:
            self._eval_loop("val", self._val_loader)
        s.metrics["epoch_time"] = train_time + s.metrics.get("val/time", 0.0)
        s.phase = "train"
        self._end_epoch()
        self._call("on_train_epoch_end")

    def _end_epoch(self) -> None:
        """Append this epoch's row to history and track the best epoch by ``monitor``."""
        s = self.state
        row = {"epoch": float(s.epoch), "step": float(s.step), **s.metrics}
        s.history.append(row)
        value = row.get(self.monitor)
        best = None if s.best is None else s.best.get(self.monitor)
        better = (
            value is not None
            and not math.isnan(value)
            and (best is None or (value > best if self.mode == "max" else value < best))
        )
        s.is_best = bool(better)
        if better:
            s.best = dict(row)

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
        finite = self._finite
        if self.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
            finite = finite & torch.isfinite(norm)
        if self._ddp is not None:  # one rank's NaN must skip the step on every rank
            finite = all_reduce_sum((~finite).to(torch.int32)) == 0
        if self.scaler is not None:
            self.scaler.step(opt)  # the scaler skips steps with non-finite gradients itself
            self.scaler.update()
        elif getattr(opt, "_step_supports_amp_scaling", False):
            # Fused optimizers (the default AdamW) skip on the device when found_inf is 1,
            # the mechanism GradScaler uses: no host sync.
            opt.grad_scale, opt.found_inf = None, (~finite).float()  # type: ignore[attr-defined]
            opt.step()
            del opt.grad_scale, opt.found_inf  # type: ignore[attr-defined]
        elif finite.item():  # another optimizer: one host read per step decides
            opt.step()
        opt.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, apply=finite)
        skip = (~finite).long()
        self._skipped += skip
        self._skipped_run.mul_(skip).add_(skip)  # run = (run + 1) if skipped else 0
        self._finite.fill_(True)
        self.state.step += 1
        if self.state.step % NONFINITE_CHECK_EVERY == 0:
            self._check_nonfinite()

    def _check_nonfinite(self) -> int:
        """Read the skip counters (a host sync: every NONFINITE_CHECK_EVERY steps and at epoch
        end only); raise once ``max_nonfinite`` steps in a row were skipped."""
        skipped, run = torch.stack([self._skipped, self._skipped_run]).tolist()
        if run >= self.max_nonfinite:
            raise NonFiniteLossError(
                f"the loss was NaN or infinite for {run} optimizer steps in a row (epoch "
                f"{self.state.epoch + 1}, step {self.state.step}); training stopped. Try a lower "
                "--lr, --grad-clip 1.0, or --precision bf16-mixed / 32 instead of 16-mixed, and "
                "check the data. Checkpoints of finished epochs are kept."
            )
        return int(skipped)

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        """SIGINT/SIGTERM: stop after the current step; a second signal exits at once."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None:
                raise KeyboardInterrupt  # the second signal: leave now
            # No stop_reason: that marks a finished run, and an interrupted one is not.
            self._signal = signum
            self.state.should_stop = True
            log.warning(
                "%s: finishing the current step, then saving checkpoints/interrupted.pt; "
                "press Ctrl-C again to exit at once",
                signal.Signals(signum).name,
            )

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

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
        prefix = "test" if phase == "test" else "val"
        s.phase = phase
        model = self.eval_model
        was_training = model.training
        model.eval()
        # Predictions gather on the device; the confusion matrix (whose bincount would make
        # the host wait for the GPU on every batch) is built once, after the loop.
        preds: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        top5_hits = torch.zeros((), device=self.device, dtype=torch.long)
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        t0 = time.perf_counter()
        s.num_batches = len(loader) if limit is None else min(limit, len(loader))  # type: ignore[arg-type]
        self._call(f"on_{kind}_start")
        self._call(f"on_{kind}_epoch_start")
        for batch_idx, batch in enumerate(loader):
            if limit is not None and batch_idx >= limit:
                break
            s.batch_idx = batch_idx
            self._call(f"on_{kind}_batch_start", batch, batch_idx)
            x, y = self._to_device(batch)
            with self._autocast():
                logits = model(x)
            logits = logits.float()
            loss = self.loss_fn(logits, y)
            loss_sum += loss * y.shape[0]
            seen += y.shape[0]
            preds.append(logits.argmax(1))
            targets.append(y)
            if self.data.num_classes >= 5:
                top5_hits += (logits.topk(5, dim=1).indices == y[:, None]).any(1).sum()
            self._call(
                f"on_{kind}_batch_end",
                {"loss": loss, "logits": logits, "targets": y},
                batch,
                batch_idx,
            )
        metrics: dict[str, float] = {}
        if phase != "sanity":
            # Each rank saw its own shard of the split: summing the counts gives every rank
            # the whole split's (float64 holds counts exactly up to 2**53). One all-reduce.
            n = self.data.num_classes
            sums = [loss_sum, top5_hits, torch.tensor(seen, device=self.device)]
            local = torch.cat(
                [self._confusion_matrix(preds, targets)] + [t.double()[None] for t in sums]
            )
            totals = all_reduce_sum(local).cpu()
            cm = totals[: n * n].view(n, n)
            loss_total, top5_total, seen_total = totals[n * n :].tolist()
        if phase != "sanity" and seen_total > 0:
            support = cm.sum(1)
            metrics[f"{prefix}/loss"] = loss_total / seen_total
            metrics[f"{prefix}/acc"] = float(cm.diag().sum() / cm.sum())
            if self.data.num_classes >= 5:
                metrics[f"{prefix}/acc_top5"] = top5_total / seen_total
            metrics[f"{prefix}/time"] = time.perf_counter() - t0
            s.per_class_acc = {
                name: (float(cm[i, i] / support[i]) if support[i] > 0 else None)
                for i, name in enumerate(self.data.classes)
            }
            s.metrics.update(metrics)
        self._call(f"on_{kind}_epoch_end")
        self._call(f"on_{kind}_end")
        model.train(was_training)
        return metrics

    def _confusion_matrix(
        self, preds: list[torch.Tensor], targets: list[torch.Tensor]
    ) -> torch.Tensor:
        """This rank's confusion matrix, flattened, float64; zeros when its shard was empty."""
        n = self.data.num_classes
        if not preds:
            return torch.zeros(n * n, dtype=torch.float64, device=self.device)
        self._confmat.reset()
        self._confmat.update(torch.cat(preds), torch.cat(targets))
        return self._confmat.compute().flatten().double()

    def _to_device(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, EncodedBatch):  # decode="gpu": JPEGs decoded here, in a batch
            x, y = decode_batch(batch, self.device)
        else:
            x = batch[0].to(self.device, non_blocking=True)
            y = batch[1].to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if x.dtype == torch.uint8:
            x = x.float()
            if self._norm is not None:
                x = torch.addcmul(self._norm[1], x, self._norm[0])
        return x, y

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    # ------------------------------------------------------------------------------- hooks
    def _call(self, method: str, *args: Any) -> None:
        for fn in self._plan[method]:
            try:
                fn(self, *args)
            except Exception as e:
                hook = getattr(fn, "__self__", fn)
                note = f"raised in hook {type(hook).__name__}.{method}"
                if hasattr(e, "add_note"):
                    e.add_note(note)
                raise

    def _call_on_exception(self, error: BaseException) -> None:
        for fn in self._plan["on_exception"]:
            try:
                fn(self, error)
            except Exception:  # the original error matters more than a failing handler
                log.exception("hook %s failed in on_exception", getattr(fn, "__self__", fn))

    def describe_hooks(self) -> str:
        """Print and return the resolved hook plan: order, hook, and the methods it runs."""
        ordered = sorted(enumerate(self.hooks), key=lambda t: (t[1].order, t[0]))
        lines = ["order  hook                         methods"]
        for _, h in ordered:
            methods = [m for m in HOOK_METHODS if _overrides(h, m)]
            lines.append(f"{h.order:>5}  {h.name:<28} {', '.join(methods) or '-'}")
        text = "\n".join(lines)
        print(text)
        return text

    # -------------------------------------------------------------------------- checkpoints
    def checkpoint_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly; loadable with ``torch.load(weights_only=True)``.

        Under DDP every rank must call it: it gathers each rank's RNG state (``rng_per_rank``),
        so a resumed rank continues its own augmentation stream.
        """
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
            "hooks": {key: h.state_dict() for key, h in self._hook_keys().items()},
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
        classes = list(ckpt.get("classes", []))
        if classes != list(self.data.classes):
            gone = sorted(set(classes) - set(self.data.classes))
            new = sorted(set(self.data.classes) - set(classes))
            raise CheckpointError(
                f"checkpoint {path} was trained on other classes: only in the checkpoint: {gone}, "
                f"only in the data: {new}"
                + ("" if gone or new else " (same names, different order)")
                + ". Resume with the data it was trained on, or start a new run."
            )
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
        keys = self._hook_keys()
        for key, hook_state in ckpt.get("hooks", {}).items():
            if key in keys:
                keys[key].load_state_dict(hook_state)
        self._pending_rng = ckpt.get("rng")
        per_rank = ckpt.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.world_size:
            self._pending_rng = per_rank[self.rank]
        elif self.world_size > 1 or per_rank is not None:
            # Saved by another number of processes: the sampler still draws exactly what it
            # would have, but the augmentation streams cannot continue; each rank gets a new one.
            log.warning(
                "%s was saved by %d process(es), this run has %d: data order is exact, "
                "augmentation randomness is reseeded",
                path,
                len(per_rank or [None]),
                self.world_size,
            )
            self._pending_rng = None
            seed_everything(rank_seed(self.seed + len(self.state.history), self.rank))
        self._call("on_load_checkpoint", ckpt)
        return ckpt

    def _hook_keys(self) -> dict[str, Hook]:
        keys: dict[str, Hook] = {}
        for h in self.hooks:
            key, n = h.name, 1
            while key in keys:
                n += 1
                key = f"{h.name}#{n}"
            keys[key] = h
        return keys


# ------------------------------------------------------------------------------------ helpers
def _overrides(hook: Hook, method: str) -> bool:
    return getattr(type(hook), method, None) is not getattr(Hook, method)


def resolve_hook_plan(hooks: Sequence[Hook]) -> dict[str, list[Callable[..., None]]]:
    """For each hook method, the bound methods to call: by ``order``, then list position.

    Methods a hook does not override are left out, so an unused method costs nothing per step.
    """
    for h in hooks:
        if not isinstance(h, Hook):
            raise TypeError(f"hooks must be Hook instances, got {type(h).__name__}")
    ordered = [h for _, h in sorted(enumerate(hooks), key=lambda t: (t[1].order, t[0]))]
    return {m: [getattr(h, m) for h in ordered if _overrides(h, m)] for m in HOOK_METHODS}


def default_optimizer(
    model: nn.Module, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norm weights (1-d tensors), as timm does."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Fused on CPU and CUDA: fastest, and it can skip a non-finite step on the device.
    kwargs: dict[str, Any] = {"fused": True} if device.type in ("cuda", "cpu") else {}
    return torch.optim.AdamW(groups, lr=lr, **kwargs)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the base lr over ``warmup_steps``, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states as tensors and plain data (weights_only-safe)."""
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _gc_frozen() -> Iterator[None]:
    """Keep the objects alive at fit start (modules, the model, the data) out of the garbage
    collector's scans for the fit, with ``gc.freeze``.

    With torch and matplotlib loaded they are ~400k objects, and every full collection walked
    them all: ~0.3 s at a time on a 2-core machine, triggered by whatever allocates most (the
    plots). The fit's own objects are still collected as usual; ``gc.unfreeze`` at the end
    hands the frozen ones back. A caller that froze objects itself is left alone.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()

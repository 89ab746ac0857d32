"""WandbHook: the run on Weights & Biases: config, step and epoch metrics, plots, artefacts."""

from __future__ import annotations

import functools
import importlib.util
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from trainer.artifacts import guarded
from trainer.distributed import is_global_zero
from trainer.errors import ConfigError
from trainer.hook import Hook
from trainer.run_files import EXPORT_REPORT_JSON, LABELS_MAPPING_JSON, MODEL_ONNX, REPORT_HTML

if TYPE_CHECKING:
    import torch

    from trainer.engine import Engine

MISSING = (
    "WandbHook (--wandb) needs the wandb package, which is not installed: "
    "pip install -e '.[wandb]' (or pip install wandb), or train without --wandb"
)

# (key, file under the run folder); {epoch:03d} is the epoch index, as the plot hooks name files.
IMAGES = [
    ("confusion_matrix", "plots/confusion_matrix/epoch_{epoch:03d}.png"),
    ("samples/fixed", "plots/samples/epoch_{epoch:03d}_fixed.png"),
    ("samples/mistakes", "plots/samples/epoch_{epoch:03d}_mistakes.png"),
]
# (artifact name, type, files under the run folder), logged at fit end with log_artifacts.
ARTIFACTS = [
    ("model", "model", [MODEL_ONNX, EXPORT_REPORT_JSON, LABELS_MAPPING_JSON]),
    ("report", "report", [REPORT_HTML]),
]


def check_api_key(mode: str | None = None) -> None:
    """Raise ``ConfigError`` when W&B would log online but has no API key, before anything
    is trained or written (``wandb.init`` would fail, or wait at a prompt, at fit start).

    ``mode`` None follows W&B's own settings (``WANDB_MODE``, ``wandb offline``). The key is
    looked for where W&B looks (``WANDB_API_KEY``, ``~/.netrc``, its settings files), with no
    prompt; a key in the environment or in the netrc file is taken without asking W&B, whose
    ``login`` would fetch the account's name over the network.
    """
    import wandb

    no_server = ("offline", "dryrun", "disabled")
    if (mode or os.environ.get("WANDB_MODE")) in no_server:
        return  # told without W&B's settings, whose reading starts W&B's service process
    try:
        settings = wandb.setup().settings
    except Exception:  # an invalid WANDB_MODE: wandb.init says so itself
        return
    if (mode or settings.mode) in no_server:
        return
    if _key_at_hand(settings.base_url) or wandb.login(verify=False, prompt=False):
        return
    raise ConfigError(
        "--wandb (WandbHook) logs to the W&B server, but no W&B API key is set up (none in "
        "WANDB_API_KEY, ~/.netrc or W&B's settings). Run `wandb login` once, or set "
        "WANDB_API_KEY; or log offline with WANDB_MODE=offline and upload later with "
        "`wandb sync`."
    )


def _key_at_hand(base_url: str) -> bool:
    """Whether the environment or the netrc file holds W&B credentials for ``base_url``."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = os.environ.get("NETRC") or Path.home() / ".netrc"
    try:
        return netrc.netrc(path).authenticators(urlparse(base_url).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbHook(Hook):
    """Logs the run to Weights & Biases, into ``out_dir/wandb`` (and the W&B server if online).

    - the run's configuration (``engine.args``, what ``args.json`` holds) as the W&B config;
    - each row ``StepLogHook`` adds to ``engine.state.step_log`` (every ``--log-every``
      optimizer steps): ``train/step_loss`` (the mean since the previous row), ``lr`` and
      ``train/img_s``, against ``global_step``; it reads nothing from the device itself;
    - every epoch: each number of the epoch's history row (``train/loss``, ``val/acc``, ...,
      named as in ``metrics.csv``), and the confusion matrix and sample grids that
      ``ConfusionMatrixHook`` and ``SampleVisualizationHook`` wrote this epoch, as images
      (read back from their PNGs, on the run's artefact writer, so nothing is drawn twice);
    - with ``log_artifacts``, at fit end: ``model.onnx`` with its export report and labels
      mapping as a ``model`` artefact, and ``report.html`` as a ``report`` artefact.

    The W&B run id is part of the hook's state in the checkpoints, so a resumed fit
    continues the same W&B run. Mode (online, offline) follows ``mode``, else the usual
    ``WANDB_MODE`` environment variable. Rank 0 logs; the other ranks do nothing.

    Needs the optional ``wandb`` package (``pip install -e '.[wandb]'``); without it the
    constructor raises ``ConfigError`` saying so, before any training; so it does when it
    would log online without a W&B API key (see ``check_api_key``).

    Args:
        out_dir: the run folder; W&B's files go to ``out_dir/wandb``.
        project: the W&B project (W&B's default when None).
        name: the run's display name (W&B picks one when None).
        tags: the run's tags.
        log_artifacts: upload the ONNX model and the reports at fit end.
        mode: "online", "offline" or "disabled"; None follows ``WANDB_MODE``.

    Attributes:
        run_id: the W&B run's id once started (kept in checkpoints).

    Example:
        >>> hooks = [*default_hooks("runs/a"), WandbHook("runs/a", project="shapes")]
        >>> Engine(model, data, hooks=hooks).fit()
    """

    # After the plot hooks, export (95) and the report (99), whose files it logs.
    order = 100

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        project: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        log_artifacts: bool = False,
        mode: str | None = None,
    ) -> None:
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError(MISSING)
        check_api_key(mode)
        self.out_dir = Path(out_dir)
        self.project = project
        self.run_name = name  # not ``name``: Hook.name is the hook's own
        self.tags = list(tags)
        self._logged_step = -1.0  # the last step_log row sent
        self.log_artifacts = log_artifacts
        self.mode = mode
        self.run_id: str | None = None
        self._run: Any = None

    def on_fit_start(self, engine: Engine) -> None:
        if not is_global_zero():
            return
        import wandb  # the package, not this module: imports are absolute

        self.out_dir.mkdir(parents=True, exist_ok=True)
        settings: dict[str, Any] = {
            "project": self.project,
            "name": self.run_name,
            "tags": self.tags or None,
            "config": dict(engine.args),
            "dir": str(self.out_dir),
            "id": self.run_id,  # None: a new run; else the checkpoint's, continued
            "resume": "allow",
            "mode": self.mode,
            "reinit": "create_new",  # a notebook may fit several engines in one process
            # Our own console stays as it is: no stdout capture, no system-metrics sampler.
            "settings": wandb.Settings(console="off", x_disable_stats=True),
        }
        log = engine.state.step_log  # a resumed fit's rows were sent before
        self._logged_step = log[-1]["step"] if log else -1.0
        self._run = wandb.init(**settings)
        self.run_id = self._run.id
        # Steps and epochs share one x axis, the optimizer step, whoever logs first.
        self._run.define_metric("global_step")
        self._run.define_metric("*", step_metric="global_step")

    def on_train_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None:
        log = engine.state.step_log
        if self._run is None or not log or log[-1]["step"] <= self._logged_step:
            return
        row = log[-1]  # StepLogHook (order 20) appended it in this batch's end
        self._logged_step = row["step"]
        self._run.log({
            "global_step": int(row["step"]),
            "train/step_loss": row["loss"],
            "lr": row["lr"],
            "train/img_s": row["img_s"],
        })  # fmt: skip

    def on_train_epoch_end(self, engine: Engine) -> None:
        run = self._run
        if run is None or not engine.state.history:
            return
        row = {
            k: v
            for k, v in engine.state.history[-1].items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        epoch = int(row.get("epoch", engine.state.epoch))
        run.log({**row, "global_step": engine.state.step})
        # On the artefact writer, after the plot hooks' jobs of this epoch (they run first,
        # order 40/50), so the PNGs read back are this epoch's.
        job = functools.partial(self._log_images, run, epoch, engine.state.step)
        engine.artifacts.submit(job, self.out_dir / "wandb")

    def _log_images(self, run: Any, epoch: int, step: int) -> None:
        import wandb

        images = {}
        for key, pattern in IMAGES:
            path = self.out_dir / pattern.format(epoch=epoch)
            if path.is_file():
                images[key] = wandb.Image(str(path), caption=f"epoch {epoch + 1}")
        if images:
            run.log({**images, "epoch": epoch, "global_step": step})

    def on_fit_end(self, engine: Engine) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        if self.log_artifacts:
            engine.artifacts.submit(functools.partial(self._log_artifacts, run), self.out_dir)
        # Finished after this fit's images and artefacts: the writer runs jobs in order.
        engine.artifacts.submit(run.finish, self.out_dir / "wandb")

    def _log_artifacts(self, run: Any) -> None:
        import wandb

        for name, kind, files in ARTIFACTS:
            present = [self.out_dir / f for f in files if (self.out_dir / f).is_file()]
            if not present:
                continue
            with guarded(self.out_dir / "wandb"):
                artifact = wandb.Artifact(f"{name}-{run.id}", type=kind)
                for path in present:
                    artifact.add_file(str(path))
                run.log_artifact(artifact)

    def on_exception(self, engine: Engine, exception: BaseException) -> None:
        run, self._run = self._run, None
        if run is not None:  # what was logged so far stays; the run is marked failed
            engine.artifacts.submit(lambda: run.finish(exit_code=1), self.out_dir / "wandb")

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")

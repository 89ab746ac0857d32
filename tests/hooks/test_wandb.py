"""WandbHook in W&B's offline mode: what it logged is read back from the offline run files."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from hooks import (
    CheckpointHook,
    ConfusionMatrixHook,
    SampleVisualizationHook,
    StepLogHook,
    WandbHook,
)
from hooks.wandb import check_api_key
from tests.conftest import (
    FAST_CLI,
    MULTILABEL_METRICS,
    NO_OUTPUTS,
    KillAfterEpoch,
    MultiLabelStandIn,
    StandInData,
    make_engine,
    make_tree,
    run_fit,
)
from tests.hooks.wandb_records import history, of_type, records, run_files
from trainer.errors import ConfigError

pytest.importorskip("wandb", reason="the [wandb] extra is not installed")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # Never the network: offline mode, no login, W&B's own settings and cache in tmp_path.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield


def test_logs_config_metrics_images_and_artifacts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"onnx")  # stand-ins for the export and the report
    (out / "report.html").write_text("<html></html>")
    hook = WandbHook(out, project="shapes", name="first", tags=["a", "b"], log_artifacts=True)
    data = StandInData()
    plots = [ConfusionMatrixHook(out), SampleVisualizationHook(out), StepLogHook(out, every=1)]
    engine = run_fit([*plots, hook], data, 2)

    (path,) = run_files(out)
    assert hook.run_id and path.name == f"run-{hook.run_id}.wandb"
    runs = of_type(path, "run")
    assert len(runs) == 1, [r.WhichOneof("record_type") for r in records(path)]
    run = runs[0]
    assert (run.project, run.display_name, list(run.tags)) == ("shapes", "first", ["a", "b"])
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["model"] == "small_cnn" and config["img_size"] == 16

    rows = history(path)
    steps = [r for r in rows if "train/step_loss" in r]
    assert len(steps) == engine.state.step  # every=1: a steps.csv row every optimizer step
    assert [r["global_step"] for r in steps] == list(range(1, engine.state.step + 1))
    assert [r["train/step_loss"] for r in steps] == [row["loss"] for row in engine.state.step_log]
    epochs = [r for r in rows if "val/acc" in r]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert [r["val/acc"] for r in epochs] == pytest.approx(
        [h["val/acc"] for h in engine.state.history]
    )
    images = [r for r in rows if r.get("confusion_matrix/_type") == "image-file"]
    assert [r["epoch"] for r in images] == [0, 1]
    assert all(r["samples/fixed/_type"] == "image-file" for r in images)
    assert len(list(path.parent.glob("files/media/images/confusion_matrix_*.png"))) == 2
    artifacts = {a.name: [f.path for f in a.manifest.contents] for a in of_type(path, "artifact")}
    assert artifacts[f"model-{hook.run_id}"] == ["model.onnx"]
    assert artifacts[f"report-{hook.run_id}"] == ["report.html"]


def test_a_resumed_fit_continues_the_same_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = WandbHook(out)
    with pytest.raises(KeyboardInterrupt):
        run_fit([first, CheckpointHook(out), KillAfterEpoch(0)], epochs=2)
    second = WandbHook(out)
    make_engine([second, CheckpointHook(out)], StandInData(), max_epochs=2).fit(resume=out)
    assert second.run_id == first.run_id is not None
    files = run_files(out)
    assert len(files) == 2 and all(f.name == f"run-{first.run_id}.wandb" for f in files)
    assert [r["epoch"] for r in history(files[1]) if "val/acc" in r] == [1]


def test_cli_flags_reach_the_run(tmp_path: Path) -> None:
    from tools import train

    tree = make_tree(tmp_path / "data")
    out = tmp_path / "run"
    code = train.main(
        [
            "--data",
            str(tree),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--wandb",
            "--wandb-project",
            "p1",
            "--wandb-name",
            "n1",
            "--wandb-tags",
            "x, y",
            *FAST_CLI,
            *NO_OUTPUTS,
        ]
    )
    assert code == 0
    (path,) = run_files(out)
    (run,) = of_type(path, "run")
    assert (run.project, run.display_name, list(run.tags)) == ("p1", "n1", ["x", "y"])
    assert json.loads((out / "args.json").read_text())["wandb_project"] == "p1"


def test_without_the_extra_the_flag_names_the_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools import train

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[wandb\]'"):
        WandbHook(tmp_path)
    assert train.main(["--wandb", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "--wandb" in err and "pip install -e '.[wandb]'" in err and "Traceback" not in err


def test_hooks_wandb_does_not_shadow_the_package() -> None:
    import wandb

    import hooks.wandb

    assert Path(wandb.__file__).parent.name == "wandb"
    assert Path(wandb.__file__).parent != Path(hooks.wandb.__file__).parent
    assert hasattr(wandb, "init") and hooks.wandb.WandbHook is WandbHook


def test_online_without_an_api_key_is_a_clear_error_before_the_run_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import wandb

    from tools import train

    monkeypatch.delenv("WANDB_MODE")  # online, W&B's default
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc either
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    wandb.teardown()  # W&B's settings are read once per process: read them again
    try:
        with pytest.raises(ConfigError, match="WANDB_MODE=offline"):
            WandbHook(tmp_path / "a")
        out = tmp_path / "run"
        argv = ["--data", str(make_tree(tmp_path / "data")), "--out", str(out), "--wandb",
                *FAST_CLI, *NO_OUTPUTS]  # fmt: skip
        assert train.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "wandb login" in err and "Traceback" not in err
        assert not out.exists()  # nothing half-made: the same command runs once a key is set
        WandbHook(tmp_path / "b", mode="offline")  # offline needs no key
    finally:
        wandb.teardown()


def test_a_key_in_the_environment_or_netrc_is_taken_without_asking_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import wandb

    def no_login(**kwargs: object) -> bool:
        raise AssertionError("wandb.login fetches the account over the network")

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(wandb, "login", no_login)
    wandb.teardown()
    try:
        monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
        check_api_key()
        monkeypatch.delenv("WANDB_API_KEY")
        host = urlparse(wandb.setup().settings.base_url).hostname
        (tmp_path / "netrc").write_text(f"machine {host} login user password {'b' * 40}\n")
        monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
        check_api_key()
        monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
        with pytest.raises(AssertionError, match="network"):
            check_api_key()  # no key at hand: W&B's own lookup decides
    finally:
        wandb.teardown()


def test_offline_is_told_without_starting_wandbs_service(monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    calls: list[object] = []
    monkeypatch.setattr(wandb, "setup", lambda *args, **kwargs: calls.append(args))
    check_api_key()  # WANDB_MODE=offline, as every test here
    check_api_key("disabled")
    assert calls == []  # wandb.setup starts W&B's service process


def test_a_multilabel_run_logs_its_own_metrics_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "run"
    hook = WandbHook(out)
    plots = [ConfusionMatrixHook(out), SampleVisualizationHook(out, num_images=4)]
    engine = run_fit([*plots, hook], MultiLabelStandIn(), 2)
    (path,) = run_files(out)
    rows = history(path)
    epochs = [r for r in rows if "val/mAP" in r]
    assert [r["epoch"] for r in epochs] == [0, 1]
    for key in MULTILABEL_METRICS:
        assert [r[key] for r in epochs] == pytest.approx([h[key] for h in engine.state.history])
    assert not [k for r in rows for k in r if k in ("val/acc", "val/acc_top5", "val/ece")]
    # The per-class 2x2 summary as the confusion matrix image; no mistakes grid.
    images = [r for r in rows if r.get("confusion_matrix/_type") == "image-file"]
    assert [r["epoch"] for r in images] == [0, 1]
    assert all(r["samples/fixed/_type"] == "image-file" for r in images)
    assert not [k for r in rows for k in r if k.startswith("samples/mistakes")]

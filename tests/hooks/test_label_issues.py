"""LabelIssuesHook: the area under the margin of each training image, its CSV, grid and
report section, its state across a resume, and the mislabelled images it finds."""

from __future__ import annotations

import csv
import html
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from hooks import CheckpointHook, LabelIssuesHook, ReportHook, default_hooks
from hooks.label_issues import margins
from tests.conftest import KillAfterEpoch, make_tree, png_size
from trainer.artifacts import ArtifactWriter
from trainer.data import ImageFolderData
from trainer.engine import Engine
from trainer.models import build_model
from trainer.run_folder import RUN_OUTPUTS
from trainer.state import EngineState


def test_margin_is_the_given_logit_minus_the_largest_other() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    given = torch.tensor([0, 0, 1, 2])
    assert margins(logits, given).tolist() == [2.0, -2.0, 0.0, 4.0]


def _fake_engine(n: int) -> Any:
    data = SimpleNamespace(
        classes=["cow", "<b>yak</b>", "dog"],
        train_samples=[(Path(f"train/{i}.png"), [0, 0, 2, 1][i]) for i in range(n)],
    )
    return SimpleNamespace(
        state=EngineState(phase="train"), data=data, artifacts=ArtifactWriter(background=False),
        train_loader=SimpleNamespace(indices=None, dataset=range(n)),
    )  # fmt: skip


def _batch(hook: LabelIssuesHook, engine: Any, index: list[int], logits: list[list[float]],
           targets: list[int], finite: bool = True) -> None:  # fmt: skip
    engine.train_loader.indices = torch.tensor(index)
    out = {"logits": torch.tensor(logits), "targets": torch.tensor(targets),
           "finite": torch.tensor(finite), "loss": torch.tensor(0.0)}  # fmt: skip
    hook.on_train_batch_end(engine, out, None, 0)


def _two_epochs(hook: LabelIssuesHook, engine: Any) -> None:
    # Epoch 1: sample 1 drawn twice (margins -2 and -5).
    _batch(hook, engine, [0, 1, 2], [[3, 1, 0], [0, 2, 1], [1, 0, 4]], [0, 0, 2])
    _batch(hook, engine, [3, 1], [[1, 1, 0], [0, 5, 0]], [1, 0])
    hook.on_train_epoch_end(engine)
    # Epoch 2: a step whose loss was not finite, and a batch without matching indices, are
    # left out; samples 2 and 3 are not drawn.
    _batch(hook, engine, [1, 0], [[0, 1, 0], [2, 0, 0]], [0, 0])
    _batch(hook, engine, [2], [[9, 0, 0]], [2], finite=False)
    engine.train_loader.indices = torch.tensor([2, 3])
    out = {"logits": torch.zeros(3, 3), "targets": torch.zeros(3, dtype=torch.int64),
           "finite": torch.tensor(True)}  # fmt: skip
    hook.on_train_batch_end(engine, out, None, 1)
    hook.on_train_epoch_end(engine)


def test_aum_per_sample_over_draws_and_epochs_and_the_csv(tmp_path: Path) -> None:
    engine = _fake_engine(4)
    hook = LabelIssuesHook(tmp_path)
    _two_epochs(hook, engine)
    score, count = hook.scores()
    assert count.tolist() == [2, 3, 1, 1]
    assert score.tolist() == pytest.approx([2.0, -8 / 3, 3.0, 0.0])
    hook.on_fit_end(engine)
    engine.artifacts.flush()
    assert [r["index"] for r in hook.issues] == [1, 3, 0, 2]  # lowest score first
    first = hook.issues[0]
    assert (first["given"], first["suggested"]) == ("cow", "<b>yak</b>")  # mean softmax argmax
    assert first["margins"] == [-3.5, -1.0]
    with open(tmp_path / "label_issues.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "given", "suggested", "score", "suggested_prob", "index",
                       "margin_1", "margin_2"]  # fmt: skip
    assert rows[1][:4] == [str(Path("train/1.png")), "cow", "<b>yak</b>", "-2.6667"]
    assert rows[1][-2:] == ["-3.5", "-1.0"]
    assert rows[2][-2:] == ["0.0", ""]  # sample 3: not drawn in epoch 2
    assert not (tmp_path / "plots" / "label_issues.png").exists()  # no images to read


def test_state_survives_a_checkpoint_round_trip(tmp_path: Path) -> None:
    engine = _fake_engine(4)
    hook = LabelIssuesHook(tmp_path)
    _two_epochs(hook, engine)
    torch.save(hook.state_dict(), tmp_path / "s.pt")
    again = LabelIssuesHook(tmp_path)
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for a, b in zip(again.scores(), hook.scores(), strict=True):
        assert torch.equal(a, b)


def test_flag_adds_the_hook_and_the_csv_is_a_run_output(tmp_path: Path) -> None:
    assert not any(isinstance(h, LabelIssuesHook) for h in default_hooks(tmp_path))
    hooks = default_hooks(tmp_path, find_label_issues=True)
    assert sum(isinstance(h, LabelIssuesHook) for h in hooks) == 1
    assert "label_issues.csv" in RUN_OUTPUTS


# ------------------------------------------------------- a tree with a few labels moved
# Mean colours 0, 90 and 180 (make_tree: by the class name): a separable tree.
CLASSES = {"cow": 10, "yak": 10, "dog": 10}
MOVED = [("cow", "3.jpg", "dog"), ("yak", "4.png", "cow")]


def _mislabelled_tree(root: Path) -> tuple[Path, set[str]]:
    make_tree(root, CLASSES, size=(8, 8))
    moved = set()
    for src, name, dst in MOVED:
        target = root / "train" / dst / f"moved_{src}_{name}"
        shutil.move(root / "train" / src / name, target)
        moved.add(str(target))
    return root, moved


def _fit(root: Path, out: Path, hooks: list[Any], epochs: int, resume: bool = False) -> Engine:
    data = ImageFolderData(root, img_size=16, batch_size=8, workers=0, seed=0)
    torch.manual_seed(0)
    model = build_model("small_cnn", data.num_classes)
    engine = Engine(model, data, hooks=hooks, max_epochs=epochs, device="cpu", lr=3e-3,
                    sanity_steps=0, args={"model": "small_cnn", "img_size": 16})  # fmt: skip
    engine.fit(resume=out if resume else None)
    return engine


@dataclass
class Run:
    out: Path
    root: Path
    moved: set[str]
    hook: LabelIssuesHook


EPOCHS = 6


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("label_issues")
    root, moved = _mislabelled_tree(base / "tree")
    hook, out = LabelIssuesHook(base / "run", num_images=4), base / "run"
    _fit(root, out, [hook, ReportHook(out)], EPOCHS)
    return Run(out, root, moved, hook)


def test_moved_labels_rank_first(run: Run) -> None:
    k = len(run.moved)
    top = [r["path"] for r in run.hook.issues[:k]]
    assert set(top) == run.moved  # precision at k = 1
    assert {r["suggested"] for r in run.hook.issues[:k]} == {"cow", "yak"}  # their own class
    assert len(run.hook.issues) == sum(CLASSES.values()) * 1  # every training image listed
    assert all(len(r["margins"]) == EPOCHS for r in run.hook.issues)


def test_grid_and_report_section(run: Run) -> None:
    assert png_size(run.out / "plots" / "label_issues.png")[0] > 0
    page = (run.out / "report.html").read_text(encoding="utf-8")
    assert 'id="label-issues"' in page and "plots/label_issues.png" in page
    for path in run.moved:
        assert html.escape(path) in page
    start = page.index('id="label-issues"')
    section = page[start : page.find("<section", start)]  # to the next section
    assert '<a href="label_issues.csv">label_issues.csv</a>' in section


def test_resume_keeps_the_record(run: Run, tmp_path: Path) -> None:
    # Killed after epoch 2, resumed and killed after epoch 3: the record holds the three
    # epochs of the straight run.
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _fit(run.root, out, [LabelIssuesHook(out), CheckpointHook(out), KillAfterEpoch(1)], EPOCHS)
    resumed = LabelIssuesHook(out)
    with pytest.raises(KeyboardInterrupt):
        _fit(run.root, out, [resumed, CheckpointHook(out), KillAfterEpoch(2)], EPOCHS, resume=True)
    assert len(resumed.epoch_sums) == 3
    straight = run.hook
    for epoch in range(3):  # the same draws and margins as the straight run's first epochs
        assert torch.equal(resumed.epoch_counts[epoch], straight.epoch_counts[epoch])
        assert torch.allclose(resumed.epoch_sums[epoch], straight.epoch_sums[epoch], atol=1e-4)


def test_report_section_escapes_paths_and_class_names(tmp_path: Path) -> None:
    from hooks.label_issues import HEADER
    from hooks.render.report_page import RunFacts, render_report
    from trainer.io import atomic_write_csv

    evil = "<script>alert(1)</script>"
    atomic_write_csv(tmp_path / "label_issues.csv", [*HEADER, "margin_1"],
                     [[f"train/{evil}.png", evil, "dog", -2.5, 0.9, 3, -2.5]])  # fmt: skip
    page = render_report(tmp_path, RunFacts("r", "finished", 2, 2, [], best=None, monitor="x"))
    assert "<script" not in page
    section = page[page.index('id="label-issues"') :]
    text = html.escape(evil, quote=False)
    assert f"train/{text}.png" in section and ">-2.5<" in section and ">dog<" in section
    assert 'href="label_issues.csv"' in section

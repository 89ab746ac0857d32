"""Loader workers import nothing: every module they use is imported before they are forked.

A forked worker inherits the parent's module locks as they were at the fork. The run's
artifact writer thread imports lazily (matplotlib, Pillow's format plugins when it saves a
PNG); had it been inside one of the imports a worker needs when the workers were forked, the
worker would wait forever for that module at its first image (seen: tools/train.py hung at
its first training batch, both workers blocked in Pillow's ``preinit``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_tree

# In a fresh interpreter (this test process has imported everything already). Each worker
# writes, after loading its images, the modules it has that its parent did not have at fork.
_SCRIPT = """
import json, multiprocessing, os, sys
from pathlib import Path
from trainer.data import ImageFolderData
from trainer.data.dataset import ImageListDataset

root, out = sys.argv[1], Path(sys.argv[2])
getitem = ImageListDataset.__getitem__

def reporting(self, key):
    item = getitem(self, key)
    new = sorted(set(sys.modules) - BEFORE)
    tmp = out / f"{os.getpid()}.tmp"  # whole or not at all: the worker is killed at any point
    tmp.write_text(json.dumps(new))
    os.replace(tmp, out / f"{os.getpid()}.json")
    return item

ImageListDataset.__getitem__ = reporting
for _ in range(2):  # the second one finds the check cache filled, as a second run does
    data = ImageFolderData(root, img_size=16, batch_size=4, workers=1, seed=0)
loaders = [data.train_loader(), data.val_loader()]
BEFORE = set(sys.modules)
for loader in loaders:
    next(iter(loader))
for worker in multiprocessing.active_children():  # persistent workers would outlive exit
    worker.kill()
os._exit(0)
"""


def test_loader_workers_import_no_module_their_parent_had_not(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    out = tmp_path / "reports"
    out.mkdir()
    subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tree), str(out)], check=True, timeout=300
    )
    reports = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(reports) == 2  # one worker per loader
    assert reports == [[], []]

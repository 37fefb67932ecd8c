import os
import sys
from pathlib import Path

import pytest
import torch

# One intra-op thread for the whole suite (set here only): batch-2 CPU passes are faster on one thread,
# and subprocesses the tests start do not oversubscribe the 2 cores.
torch.set_num_threads(int(os.environ.get("KDLAB_TEST_THREADS", "1")))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# tests/fakestages.py (a stand-in for kdlab.experiment.stages) is imported by module name, also by the
# worker processes the sweep executor spawns, which inherit sys.path
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config, items):
    for item in items:  # tests/e2e/ trains networks end to end; tests/unit/ does not
        if "e2e" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.e2e)
    if SHARED.exists():
        return
    skip = pytest.mark.skip(reason=f"{SHARED} not present (extra tier: seed plans and the CIFAR-10 copy)")
    for item in items:
        if "shared" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_overrides():
    """A demo config small enough for a few seconds per stage on one CPU thread."""
    return [
        "data.subset=200", "data.test_subset=100", "data.batch_size=32",
        "teacher.arch=resnet8", "student.arch=resnet8", "teacher.epochs=2", "student.epochs=2",
        "objective.intra.cache.size=8", "runtime.progress=false",
    ]

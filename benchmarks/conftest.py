"""Benchmarks compare ours against the reference in one run; each comparison is one
pytest-benchmark group (``pytest benchmarks``).

``pytest benchmarks --quick`` runs the subset each module names in ``QUICK`` (parameter ->
values kept), one timed round each: a check that the whole suite still runs, not a measurement.
``--peers`` adds test_peers.py: the forward in onnxruntime, OpenVINO and ncnn beside ours.
"""

import pytest
import torch

from unet_fast import bench, settings

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_quick = False


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="run each module's QUICK subset, one round each")
    parser.addoption("--peers", action="store_true", help="also run test_peers.py: onnxruntime, OpenVINO and ncnn "
                                                         "beside ours (the [peers] extra)")


def pytest_configure(config):
    global _quick
    _quick = config.getoption("--quick")


@pytest.fixture(autouse=True)
def _settings_as_the_environment_is_left():
    """unet_fast reads its environment switches once: a benchmark that sets them (with
    monkeypatch, undone before this runs) leaves them to be read again."""
    yield
    settings.reload()


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--peers"):  # minutes of other engines: only when asked for
        peers = [item for item in items if item.module.__name__ == "test_peers"]
        config.hook.pytest_deselected(items=peers)
        items[:] = [item for item in items if item not in peers]
    if not _quick:
        return
    kept, dropped = [], []
    for item in items:
        wanted = getattr(item.module, "QUICK", {})
        params = getattr(item, "callspec", None)
        params = params.params if params else {}
        matches = all(params[name] in values for name, values in wanted.items() if name in params)
        (kept if matches else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def rounds(full: int) -> int:
    """Timed rounds for a benchmark that takes ``full`` rounds in a real run."""
    return 1 if _quick else full


def peak_memory_mb(step) -> float:
    return bench.peak_memory_mb(step, DEVICE)


def synchronize() -> None:
    bench.synchronize(DEVICE)


@pytest.fixture
def device() -> torch.device:
    return DEVICE

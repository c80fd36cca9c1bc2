"""Suite-wide options, capability probes and shared fixtures.

External resources (trained weights, COCO, an .om model, an NPU) are given by
command-line options or environment variables; a test that needs one and does
not get it is skipped with a reason that names what is missing and how to
supply it. Skips are decided here, in one place, not by ad hoc ``skipif``s.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent
FIXTURES = REPO_ROOT / "fixtures"
GOLDEN = FIXTURES / "golden"

HARDWARE_MARKERS = ("cpu", "npu", "gpu")

try:  # Hypothesis profiles: bounded and derandomized for CI, longer for nightly.
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci",
        max_examples=60,
        deadline=None,
        derandomize=True,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile(
        "nightly",
        max_examples=1000,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("dev", max_examples=20, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("m2det", "M2Det conformance resources")
    group.addoption(
        "--weights",
        default=os.environ.get("M2DET_WEIGHTS"),
        help="trained checkpoint m2det512_vgg.pth (env M2DET_WEIGHTS)",
    )
    group.addoption(
        "--om-json",
        default=os.environ.get("M2DET_OM_JSON"),
        help="npu layer: the atc JSON of the .om (atc --mode=1 --om=X.om --json=X.json), the fusion map "
             "m2det drift aligns the device dump with (env M2DET_OM_JSON); optional",
    )
    group.addoption(
        "--coco-root",
        default=os.environ.get("M2DET_COCO_ROOT"),
        help="folder with instances_minival2014.json and val2014/ (env M2DET_COCO_ROOT)",
    )
    group.addoption(
        "--om",
        action="append",
        default=None,
        help="Ascend .om model; repeat for several batch sizes (env M2DET_OM, comma separated)",
    )
    group.addoption(
        "--device-id",
        "--device",
        dest="device_id",
        default=os.environ.get("M2DET_DEVICE_ID", "0"),
        help="NPU device id, or several comma-separated (0,1: the multi-device checks run one worker per "
             "device; the single-device checks use the first) (env M2DET_DEVICE_ID, default 0)",
    )
    group.addoption(
        "--published",
        default=os.environ.get("M2DET_PUBLISHED") or None,
        help="published throughput table the throughput gate holds the .om to: one of "
             "m2det_impl.published.published_names() (env M2DET_PUBLISHED; default the guide's)",
    )
    group.addoption(
        "--batch-sizes",
        default=os.environ.get("M2DET_BATCH_SIZES", "1"),
        help="comma-separated batch sizes for the accuracy gates (env M2DET_BATCH_SIZES)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Known failures per platform (fixtures/known_failures.json): listed tests
    are marked xfail with their reason; stale entries are reported at the end.
    A pytest-xdist worker takes its share of the cores for its runtimes."""
    from m2det_impl.errors import InputFileError
    from tests.plugins.known_failures import KnownFailuresPlugin

    try:
        config.pluginmanager.register(KnownFailuresPlugin(REPO_ROOT), "m2det-known-failures")
    except InputFileError as exc:
        raise pytest.UsageError(f"known failures: {exc}") from None
    _share_the_cores(os.environ.get("PYTEST_XDIST_WORKER_COUNT"))


def _share_the_cores(workers: str | None) -> None:
    """Under ``-n N``, each worker's ONNX Runtime and PyTorch (and the ``m2det``
    processes it starts, which inherit ``M2DET_THREADS``) get cores / N
    threads, unless M2DET_THREADS says otherwise: N runtimes each spinning one
    thread per core cost the 2-core CI machine a sixth more CPU time."""
    if not workers:
        return
    from m2det_impl.backends.base import THREADS_ENV, default_threads

    os.environ.setdefault(THREADS_ENV, str(max(1, (os.cpu_count() or 1) // max(1, int(workers)))))
    try:
        threads = default_threads()
    except Exception as exc:  # noqa: BLE001 - a bad value is the user's: say so
        raise pytest.UsageError(str(exc)) from None
    # PyTorch sizes its pool from this when a test first imports it (importing it
    # here would cost every worker, and every nested pytest, a second or two)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test must carry exactly one hardware marker; a test without one
    would silently run (or not) in the wrong layer."""
    bad = []
    for item in items:
        marks = [m for m in HARDWARE_MARKERS if item.get_closest_marker(m) is not None]
        if len(marks) != 1:
            bad.append(f"{item.nodeid}: hardware markers {marks or 'none'}")
    if bad:
        raise pytest.UsageError(
            "each test needs exactly one of the markers cpu/npu/gpu:\n  " + "\n  ".join(bad)
        )
    # Slow tests (hours) run only when asked for by name, even if their
    # resources happen to be configured in the environment.
    if "slow" not in (config.getoption("-m") or ""):
        skip = pytest.mark.skip(reason="slow (minutes to hours): select it with -m 'cpu and slow' or -m slow")
        for item in items:
            if item.get_closest_marker("slow") is not None:
                item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The versions and devices that decide the numbers."""
    lines = [f"platform: {platform.platform()} ({platform.machine()}, {os.cpu_count()} cpus)"]
    versions = []
    for name in ("numpy", "torch", "onnx", "onnxruntime", "cv2", "pycocotools", "numba"):
        try:
            module = __import__(name)
            versions.append(f"{name} {getattr(module, '__version__', '?')}")
        except Exception:  # noqa: BLE001 - a header must never break collection
            versions.append(f"{name} missing")
    lines.append("versions: " + ", ".join(versions))
    try:
        import onnxruntime

        lines.append("onnxruntime providers: " + ", ".join(onnxruntime.get_available_providers()))
    except Exception:  # noqa: BLE001
        pass
    try:
        from m2det_impl import environment

        lines.extend(environment.npu_header_lines())
    except Exception:  # noqa: BLE001
        pass
    return lines


# ---------------------------------------------------------------- resources
def _require_path(value: str | None, what: str, how: str) -> Path:
    if not value:
        pytest.skip(f"{what} not given: {how}")
    path = Path(value).expanduser()
    if not path.exists():
        pytest.skip(f"{what} not found at {path}: {how}")
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def weights_path(pytestconfig: pytest.Config) -> Path:
    return _require_path(
        pytestconfig.getoption("--weights"),
        "trained checkpoint m2det512_vgg.pth",
        "pass --weights PATH or set M2DET_WEIGHTS",
    )


@pytest.fixture(scope="session")
def coco_root(pytestconfig: pytest.Config) -> Path:
    root = _require_path(
        pytestconfig.getoption("--coco-root"),
        "COCO minival2014",
        "pass --coco-root DIR (holding instances_minival2014.json and val2014/) or set M2DET_COCO_ROOT",
    )
    for needed in ("instances_minival2014.json", "val2014"):
        if not (root / needed).exists() and not (root / "annotations" / needed).exists():
            pytest.skip(f"COCO root {root} lacks {needed}: see README, 'Accuracy gates'")
    return root


@pytest.fixture(scope="session")
def om_paths(pytestconfig: pytest.Config) -> list[Path]:
    given = pytestconfig.getoption("--om") or [
        p for p in os.environ.get("M2DET_OM", "").split(",") if p
    ]
    if not given:
        pytest.skip("no .om model given: pass --om PATH (repeatable) or set M2DET_OM")
    paths = [Path(p).expanduser() for p in given]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f".om model not found: {', '.join(missing)}")
    return paths


@pytest.fixture(scope="session")
def published_name(pytestconfig: pytest.Config) -> str:
    """The published throughput table chosen by --published / M2DET_PUBLISHED (default: the guide's).
    An unknown name is a usage error, not a skip."""
    from m2det_impl.published import DEFAULT_PUBLISHED, published_names

    name = pytestconfig.getoption("--published") or DEFAULT_PUBLISHED
    if name not in published_names():
        raise pytest.UsageError(f"--published / M2DET_PUBLISHED: unknown table {name!r}; choose one of "
                                f"{', '.join(published_names())}")
    return name


@pytest.fixture(scope="session")
def device_ids(pytestconfig: pytest.Config) -> tuple:
    """Every ``--device-id`` given (``0,1,2,3``), checked as ``m2det --device-id`` checks them."""
    from m2det_impl.workflows.devices import check_device_ids

    text = str(pytestconfig.getoption("device_id"))
    try:
        return check_device_ids(tuple(int(v) for v in text.split(",")))
    except (ValueError, TypeError) as exc:
        raise pytest.UsageError(f"--device-id / M2DET_DEVICE_ID {text!r}: {exc}") from None


@pytest.fixture(scope="session")
def device_id(device_ids) -> int:
    """The device of the single-device checks: the first ``--device-id``."""
    return device_ids[0]


@pytest.fixture(scope="session")
def npu_runtime() -> str:
    """Name of the importable Ascend runtime, or skip saying what to install."""
    for module in ("ais_bench.infer.interface", "aclruntime"):
        try:
            __import__(module)
            return module
        except Exception:  # noqa: BLE001 - any import failure means "absent"
            continue
    pytest.skip(
        "no Ascend runtime: install the aclruntime and ais_bench wheels from Ascend's "
        "ais_bench tool (CANN toolkit) on a host with a 310P and its driver"
    )


@pytest.fixture(scope="session")
def cuda_provider() -> str:
    try:
        import onnxruntime
    except ImportError:
        pytest.skip("onnxruntime is not installed")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip(
            "onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu on a host with CUDA"
        )
    return "CUDAExecutionProvider"


# ------------------------------------------------------------ golden model
@pytest.fixture(scope="session")
def cfg512():
    from m2det_impl.network.config import get_config

    return get_config(512)


@pytest.fixture(scope="session")
def golden_forward() -> dict:
    """The reference's forward pass on three images (golden/README.md)."""
    import numpy as np

    with np.load(GOLDEN / "forward_m2det512.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def golden_model(cfg512):
    """M2Det512 with golden weights (salt 0), eval mode, as every run builds it (``load_model``:
    no default initialisation to overwrite, two seconds a worker). Shared: do not mutate."""
    from m2det_impl.network.model import load_model

    return load_model(cfg512, None, salt=0)


@pytest.fixture(scope="session")
def golden_batch(golden_forward):
    """The three golden inputs as one float32 batch [3, 3, 512, 512]."""
    import numpy as np

    return np.stack([golden_forward[f"input_{i}"] for i in range(3)])

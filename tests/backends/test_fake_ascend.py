"""The Ascend fake itself (tests/backends/fake_ascend.py) behaves as docs/ascend-runtime-notes.md says the
real bindings do: the model's batch, -1 and set_dynamic_batchsize, cold then warm executes, MemorySummary,
a process-wide finalize, per-session free_resource, devices in separate processes (cpu layer)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
from fake_ascend import FakeOm, expected_outputs, install, overlaps, read_events, use_shim

pytestmark = pytest.mark.cpu

S = 4


def _images(n, start=1.0):
    return np.stack([np.full((3, S, S), start + i, np.float32) for i in range(n)])


def _session(acl, path, device=0):
    return acl.InferenceSession(str(path), device, acl.session_options())


def _run(acl, session, images):
    tensor = acl.Tensor(images)
    tensor.to_device(0)
    outs = session.run([o.name for o in session.get_outputs()], [tensor])
    for out in outs:
        out.to_host()
    return [np.array(o) for o in outs]


def test_static_batch_cold_then_warm_and_the_copy_lists(tmp_path, monkeypatch):
    acl = install(monkeypatch, "2023", ais_bench=False)
    om = FakeOm(batch=4, exec_ms=60.0, cold_ms=900.0).write(tmp_path / "bs4.om")
    session = _session(acl, om)
    (desc,) = session.get_inputs()
    assert desc.shape == [4, 3, S, S] and desc.realsize == 4 * 3 * S * S * 4 and str(desc.datatype) == "dtype.float32"
    with pytest.raises(RuntimeError, match="not match"):  # one image for a batch-4 model: the caller pads
        _run(acl, session, _images(1))
    for _ in range(3):
        scores, loc = _run(acl, session, _images(4))
    want = expected_outputs(_images(4))
    assert np.array_equal(scores, want[0]) and np.array_equal(loc, want[1])
    assert session.sumary().exec_time_list == [900.0, 60.0, 60.0]
    memory = acl.MemorySummary()
    assert len(memory.H2D_time_list) == 4 and len(memory.D2H_time_list) == 6  # 1 per to_device, 1 per output
    session.reset_sumaryinfo()
    memory.reset()
    assert session.sumary().exec_time_list == [] and acl.MemorySummary().H2D_time_list == []
    out = session.run([session.get_outputs()[0].name], [_device_tensor(acl, _images(4))])[0]
    with pytest.raises(RuntimeError, match="in npu"):
        np.array(out)


def _device_tensor(acl, images):
    tensor = acl.Tensor(images)
    tensor.to_device(0)
    return tensor


def test_dynamic_batch_needs_a_built_batch(tmp_path, monkeypatch):
    acl = install(monkeypatch, "2023", ais_bench=False)
    om = FakeOm(batch=-1, dynamic_batches=(1, 4, 8), exec_ms=60.0).write(tmp_path / "dyn.om")
    session = _session(acl, om)
    (desc,) = session.get_inputs()
    assert desc.shape[0] == -1 and desc.realsize == 8 * 3 * S * S * 4  # the largest batch's size
    with pytest.raises(RuntimeError, match="set_dynamic_batchsize"):
        _run(acl, session, _images(8))
    with pytest.raises(RuntimeError, match="not correct"):
        session.set_dynamic_batchsize(3)
    session.set_dynamic_batchsize(8)
    scores, _ = _run(acl, session, _images(8))
    assert scores.shape == (8, 6, 5)
    session.set_dynamic_batchsize(1)
    assert session.get_inputs()[0].realsize == 3 * S * S * 4
    assert _run(acl, session, _images(1))[1].shape == (1, 6, 4)
    static = _session(acl, FakeOm(batch=2).write(tmp_path / "bs2.om"))
    with pytest.raises(RuntimeError, match="dynamic_batch_size"):
        static.set_dynamic_batchsize(2)


def test_2023_finalize_ends_acl_for_the_whole_process(tmp_path, monkeypatch):
    acl = install(monkeypatch, "2023", ais_bench=False)
    om = FakeOm(batch=1).write(tmp_path / "bs1.om")
    first, second = _session(acl, om), _session(acl, om)
    assert not hasattr(first, "free_resource")
    assert first.finalize() == 0
    with pytest.raises(RuntimeError, match="finalized"):
        _run(acl, second, _images(1))  # a session still open dies with ACL
    with pytest.raises(RuntimeError, match="aclFinalize"):
        _session(acl, om)  # and ACL is never initialised again
    assert second.finalize() != 0  # a second finalize: an error code, no exception


def test_ait_free_resource_is_per_session_and_finalize_is_static(tmp_path, monkeypatch):
    acl = install(monkeypatch, "ait", ais_bench=False)
    om = FakeOm(batch=1, exec_ms=60.0, cold_ms=900.0).write(tmp_path / "bs1.om")
    first = _session(acl, om)
    _run(acl, first, _images(1))
    _run(acl, first, _images(1))
    assert first.sumary().exec_time_list == [(100.0, 1000.0), (1001.0, 1061.0)]  # (start, end) ms
    first.free_resource()
    with pytest.raises(RuntimeError, match="released"):
        _run(acl, first, _images(1))
    second = _session(acl, om)  # ACL still up
    _run(acl, second, _images(1))
    acl.InferenceSession.finalize()
    with pytest.raises(RuntimeError):
        _session(acl, om)


def test_dropping_a_session_unloads_its_model(tmp_path, monkeypatch):
    acl = install(monkeypatch, "2023", ais_bench=False)
    om = FakeOm(batch=1).write(tmp_path / "bs1.om")
    session = _session(acl, om)
    assert acl._acl.loaded == 1
    del session
    gc.collect()
    assert acl._acl.loaded == 0 and not acl._acl.finalized
    _session(acl, om)  # and the next one opens


@pytest.mark.parametrize("generation", ["2023", "ait"])
def test_ais_bench_interface_over_the_fake(tmp_path, monkeypatch, generation):
    install(monkeypatch, generation)
    from ais_bench.infer.interface import InferSession, MemorySummary

    om = FakeOm(batch=2, exec_ms=60.0, cold_ms=900.0).write(tmp_path / "bs2.om")
    session = InferSession(0, str(om))
    scores, loc = session.infer([_images(2)])
    assert np.array_equal(loc, expected_outputs(_images(2))[1])
    h2d = MemorySummary.get_H2D_time_list if generation == "2023" else MemorySummary.get_h2d_time_list
    assert len(h2d()) == 1
    if generation == "2023":
        assert session.sumary().exec_time_list == [900.0]
        assert not hasattr(session, "free_resource")
    else:
        assert session.summary().exec_time_list == [(100.0, 1000.0)]
        session.free_resource()
        InferSession(0, str(om))  # free_resource leaves ACL up


def _worker(path, device, executes, barrier):
    import aclruntime

    session = aclruntime.InferenceSession(path, device, aclruntime.session_options())
    barrier.wait(timeout=60)  # all loaded before any executes, as ais_bench's workers wait for each other
    for i in range(executes):
        tensor = aclruntime.Tensor(np.full((1, 3, S, S), 10 * device + i, np.float32))
        tensor.to_device(device)
        session.run([o.name for o in session.get_outputs()], [tensor])
    return aclruntime.__name__, session.sumary().exec_time_list


def test_the_shim_reaches_spawned_workers_and_devices_run_concurrently(tmp_path, monkeypatch):
    """Three spawn workers on devices 0, 1 and 0: devices 0 and 1 overlap, device 0's two never do."""
    logs = tmp_path / "logs"
    logs.mkdir()
    om = FakeOm(batch=1, sleep_ms=120.0, log_dir=str(logs), exec_ms=60.0, cold_ms=900.0).write(tmp_path / "m.om")
    use_shim(monkeypatch, tmp_path / "shim")
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(3) as pool:
        barrier = manager.Barrier(3)
        results = pool.starmap(_worker, [(str(om), 0, 3, barrier), (str(om), 1, 3, barrier), (str(om), 0, 3, barrier)])
    assert results == [("aclruntime", [900.0, 60.0, 60.0])] * 3
    executes = read_events(logs, "execute")
    assert len(executes) == 9 and len({e["pid"] for e in executes}) == 3
    dev0 = [e for e in executes if e["device"] == 0]
    dev1 = [e for e in executes if e["device"] == 1]
    assert overlaps(dev0, dev1)
    pids = sorted({e["pid"] for e in dev0})
    assert not overlaps([e for e in dev0 if e["pid"] == pids[0]], [e for e in dev0 if e["pid"] == pids[1]])


def test_the_shim_reaches_a_python_c_worker(tmp_path, monkeypatch):
    om = FakeOm(batch=1).write(tmp_path / "m.om")
    use_shim(monkeypatch, tmp_path / "shim", generation="ait")
    code = ("import aclruntime; from ais_bench.infer.interface import InferSession; "
            f"s = InferSession(0, {str(om)!r}); print(hasattr(s, 'free_resource'), type(aclruntime).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ)).stdout
    assert out.split() == ["True", "module"]


@pytest.mark.parametrize("generation", ["2023", "ait"])
def test_ais_bench_infer_on_a_dynamic_batch_model(tmp_path, monkeypatch, generation):
    """T's infer ignores the mode (the batch set once stays); A's resets it: "static" unsets a dynamic batch,
    "dymbatch" sets it from the feed."""
    install(monkeypatch, generation)
    from ais_bench.infer.interface import InferSession

    session = InferSession(0, str(FakeOm(batch=-1, dynamic_batches=(1, 8)).write(tmp_path / "dyn.om")))
    session.set_dynamic_batchsize(8)
    assert session.infer([_images(8)], mode="dymbatch")[0].shape == (8, 6, 5)
    if generation == "2023":
        assert session.infer([_images(8)])[0].shape == (8, 6, 5)
    else:
        with pytest.raises(RuntimeError):
            session.infer([_images(8)])  # mode "static": set_staticbatch() undoes the dynamic batch
        assert session.infer([_images(1)], mode="dymbatch")[0].shape == (1, 6, 5)

"""Every user-supplied file of every ``m2det`` command, fed the hostile variants users produce.

The README's promise: bad input is exit 2 with ONE line naming the file and the problem; exit 3 only
for bugs. The sweep (issue: "exit 3 only for real bugs") gives every JSON input of ``report``,
``compare``, ``collect``, ``regress``, ``evaluate``, ``merge``, ``drift`` the same variants (missing,
empty, truncated, a folder, binary garbage, not UTF-8, a list/string/null/number/empty object instead of
the record, a file of another kind), the fields each reader uses the wrong type, and the binary inputs
(``.npz`` saved runs and golden forwards, ``.npy`` inputs) empty, truncated and misshapen. Each case
says: exit 2, one line on stderr starting ``m2det CMD: error:``, naming the file, no Python exception
class (``KeyError: 'x'`` is no message for a user), and no new output folder left behind.

The second half holds the folder-writing commands to the same promise as ``run`` and ``report``: a fresh
``--output`` (or ``--results``) path plus a bad input leaves the path absent.

Everything runs in-process on tiny hand-made files (no model is built, no network runs), so the whole
module takes a few seconds. Readers were fuzzed before (tests/cli/test_fuzz_readers.py: annotations,
results, info files, checkpoints, configs, images, journals, shard files); this sweep adds the records
between commands that nobody had fed a hostile file.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest

from m2det_impl.cli import main
from m2det_impl.exit_codes import EXIT_BAD_INPUT
from m2det_impl.resources import MINI_COCO, data_path

pytestmark = pytest.mark.cpu

ANN = MINI_COCO / "annotations" / "instances_minival2014.json"
IMAGE_ID = 3226  # an image of the bundled set
SECOND_ID = 18900  # the bundled set's second image by id: shards of --limit 2 cover both
STEM = f"COCO_val2014_{IMAGE_ID:012d}"
EXCEPTION_NAMES = re.compile(r"\b(KeyError|TypeError|ValueError|IndexError|AttributeError|EOFError|BadZipFile|"
                             r"UnicodeDecodeError|JSONDecodeError)\b")


# ------------------------------------------------------------------ valid records, by hand (no model, no run)
def _summary() -> dict:
    return {"ap": 0.25, "stats": [0.25] * 12, "num_images": 1, "num_detections": 1, "batch_size": 1,
            "image_ids": [IMAGE_ID], "images_per_second": 2.0, "images_per_second_from": "this run",
            "dataset": "bundled mini COCO", "skipped": {}, "golden_weights": False, "weights": {"kind": "none"},
            "identity": {"size": 512, "backend": "simulated-npu", "model": None, "weights": "golden0"}}


def _results() -> list:
    return [{"image_id": IMAGE_ID, "category_id": 1, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.9}]


def _this_machine() -> dict:
    """This machine's identity, read once per process (collect refuses a bench.json measured elsewhere)."""
    from m2det_impl.gating import machine

    if not hasattr(_this_machine, "identity"):
        _this_machine.identity = machine.machine_identity()
    return dict(_this_machine.identity)


def _bench() -> dict:
    here = _this_machine()  # so that the valid file is valid for collect too (the control below)
    return {"backend": "simulated-npu", "size": 512,
            "machine": {"cpu": here.get("cpu"), "cores": here.get("cores"), "arch": here.get("arch"),
                        "machine": here.get("arch"), "versions": {}},
            "warmup": 0, "repeats": 1, "weights": {"kind": "none"},
            "published": {"name": "guide", "source": "the guide", "platform": "310P3", "table": {"1": 37.817}},
            "inference": [{"batch_size": 1, "images_per_second": 100.0, "wall_clock_images_per_second": 90.0,
                           "execute_clock": "simulated", "wall_clock": "wall clock", "median_s_per_batch": 0.01}],
            "end_to_end": [], "host": {"images": 1, "images_per_second": 120.0}}


def _comparison() -> dict:
    level = {"iou": 0.5, "score_tol": 0.05, "matched": 1, "detections_candidate": 1, "detections_reference": 1,
             "fraction": 1.0, "lowest_image_fraction": 1.0}
    return {"kind": "variant-comparison", "candidate": "a", "reference": "b", "images": 1,
            "image_ids": [str(IMAGE_ID)], "outputs": {}, "detections": {"strict": dict(level), "object_level": level},
            "ap": {"reference": 0.2, "candidate": 0.2, "change": 0.0, "images": 1},
            "seconds_per_image": {"a": 0.5, "b": 0.5}, "paired_speed": False}


def _shard(index: int) -> dict:
    return {"shard": {"index": index, "count": 2}, "identity": {"size": 512, "backend": "simulated-npu"},
            "image_ids": [(IMAGE_ID, SECOND_ID)[index]], "skipped": {}, "results": []}


def _tiny_onnx(path: Path, dims: list, outputs: Sequence[str] = ("scores",)) -> Path:
    """A model of one Relu per output: what ``drift`` needs beside its dump, and an fp16 forecast's model
    (nothing to compute before the inputs are checked)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["image"], [name], name=("relu", "relu_loc")[i])
                               for i, name in enumerate(outputs)], "tiny",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims) for name in outputs])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    return path


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Dict[str, Path]:
    """One valid file of every kind the sweep mutates, and the folders the commands need beside it."""
    from ascend_dumps import Tensor, write_dump

    from m2det_impl.network.config import get_config
    from m2det_impl.pipeline.ais_files import write_outputs

    root = tmp_path_factory.mktemp("sweep-valid")

    def put(name: str, doc) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
        return path

    files = {
        "summary": put("runA/summary.json", _summary()), "results": put("runA/results.json", _results()),
        "bench": put("bench.json", _bench()), "compare": put("compare.json", _comparison()),
        "evsummary": put("evsummary.json", {"ap": 0.3, "num_images": 1, "skipped": {}}),
        "shard": put("shards/results.shard-0-of-2.json", _shard(0)),
        "shard1": put("shards/results.shard-1-of-2.json", _shard(1)),
        "ais": put("ais.json", {"filesinfo": {"0": {"infiles": [f"prep/{STEM}.bin"], "outfiles": []}}}),
        "bounds": data_path("drift_bounds.json"), "tolerances": data_path("tolerances.json"),
        "baseline": data_path("baselines", "cpu-x86_64-2core.json"),
        "om_json": put("om.json", {"name": "m", "graph": [{"name": "g", "op": [{"name": "relu", "type": "Relu"}]}]}),
    }
    shutil.copytree(root / "runA", root / "runB")
    files["runA"], files["runB"], files["shards"] = root / "runA", root / "runB", root / "shards"
    # an ais_bench output folder of one image (all-zero outputs: no detections, nothing to decode)
    cfg = get_config(512)
    write_outputs(root / "ais-out" / "d", STEM, np.zeros((cfg.num_priors, cfg.num_classes), np.float32),
                  np.zeros((1, cfg.num_priors, 4), np.float32))
    files["outputs"] = root / "ais-out"
    shutil.copy(files["ais"], root / "ais-out" / "d_summary.json")
    # the current results of regress, a results file of m2det collect's format
    from m2det_impl.gating.regress import RESULTS_FORMAT

    files["current"] = put("current.json", {"format": RESULTS_FORMAT, "platform": "p", "machine": {}, "workload": {},
                                            "environment": {}, "figures": {"ap": {"x/bs1": 0.3}}})
    # saved runs (pytest --save-outputs' layout: <name>.npz and its <name>.json) of 16 priors
    rng = np.random.default_rng(0)
    scores, loc = rng.random((1, 16, 81), np.float32), rng.random((1, 16, 4), np.float32)
    for folder, name in (("saved", "torch"), ("saved", "onnxruntime"), ("golden", "torch__golden__golden0")):
        (root / folder).mkdir(exist_ok=True)
        np.savez(root / folder / f"{name}.npz", scores=scores, loc=loc, image_ids=np.asarray(["1"]),
                 image_sizes=np.asarray([[64, 48]]))
        put(f"{folder}/{name}.json", {"name": name, "images": 1, "backend": name})
    files["saved"], files["golden"] = root / "saved", root / "golden"
    files["saved_meta"] = root / "saved" / "torch.json"
    # drift: a tiny model, its input and a one-file dump
    files["onnx8"] = _tiny_onnx(root / "tiny.onnx", [1, 3, 8, 8])
    files["onnx512"] = _tiny_onnx(root / "tiny512.onnx", ["batch", 3, 512, 512], ("scores", "loc"))
    files["input8"] = root / "input8.bin"
    np.zeros((1, 3, 8, 8), np.float32).tofile(files["input8"])
    write_dump(root / "dump", "Relu", "relu", [Tensor.of(np.zeros((1, 3, 8, 8)))], task=1, timestamp=1)
    files["dump"] = root / "dump"
    return files


@pytest.fixture(autouse=True)
def _machine_read_once(monkeypatch):
    """collect reads this machine's identity (CPU model, devices) first thing: tenths of a second that
    a hundred cases need not repeat, and no part of what they test."""
    from m2det_impl.gating import collect

    monkeypatch.setattr(collect, "machine_identity", _this_machine)


# ------------------------------------------------------------------ running a case
def _call(argv: Sequence[object], capsys) -> tuple:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()], err


def _assert_one_line_naming(argv, capsys, named: Path, absent: Sequence[Path] = ()) -> str:
    """Exit 2, one line ``m2det CMD: error: ...`` naming ``named``, no exception class name, no traceback,
    and nothing left at ``absent`` (output paths that did not exist before)."""
    code, lines, err = _call(argv, capsys)
    assert code == EXIT_BAD_INPUT, (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"m2det {argv[0]}: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert str(named) in lines[0], (named, lines[0])
    assert not EXCEPTION_NAMES.search(lines[0]), lines[0]
    for path in absent:
        assert not Path(path).exists(), f"{path} left behind by a failing {argv[0]}"
    return lines[0]


# ------------------------------------------------------------------ hostile variants of a JSON file
def _generic_variants(valid_path: Path) -> Dict[str, object]:
    raw = valid_path.read_bytes()
    return {"missing": None, "empty": b"", "truncated": raw[: len(raw) // 2], "folder": "FOLDER",
            "garbage": bytes(range(256)) * 4, "not utf-8": b'{"a": "\xff\xfe caf\xe9"}', "list": b"[]",
            "string": b'"x"', "null": b"null", "number": b"3", "empty object": b"{}", "nan": b'{"ap": NaN}'}


def _place(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if data == "FOLDER":
        path.mkdir()
    elif data is not None:
        path.write_bytes(data)
    return path


def _in_copy(tmp: Path, folder: Path, name: str, data) -> Path:
    """A copy of ``folder`` under ``tmp`` with its file ``name`` replaced by ``data``; returns that file's path."""
    copy = tmp / folder.name
    shutil.copytree(folder, copy)
    (copy / name).unlink()
    return _place(copy / name, data)


Slot = Callable[[Dict[str, Path], Path, object], tuple]  # (files, tmp, data) -> (argv, hostile path, outputs)


def _slot_in_folder(folder_key: str, name: str, argv: Callable[[Dict[str, Path], Path, Path], list],
                    outputs: Callable[[Path], list]) -> Slot:
    def make(files, tmp, data):
        path = _in_copy(tmp, files[folder_key], name, data)
        return argv(files, tmp, path), path, outputs(tmp)
    return make


def _slot_file(argv: Callable[[Dict[str, Path], Path, Path], list], outputs: Callable[[Path], list]) -> Slot:
    def make(files, tmp, data):
        path = _place(tmp / "hostile.json", data)
        return argv(files, tmp, path), path, outputs(tmp)
    return make


def _drift_argv(slot: str) -> Callable:
    def argv(files, tmp, path):
        given = {"--onnx": files["onnx8"], "--input": files["input8"], "--dump": files["dump"],
                 "--om-json": files["om_json"], "--bounds": files["bounds"], slot: path}
        return ["drift", *[x for pair in given.items() for x in pair], "--output", tmp / "out"]
    return argv


OUT = lambda tmp: [tmp / "out"]  # noqa: E731 - the output folder each case gives, which must stay absent
SLOTS: Dict[str, tuple] = {
    # name: (valid file key, the slot, variants skipped (they are valid input there), why)
    "report run summary": ("summary", _slot_in_folder(
        "runA", "summary.json", lambda f, t, p: ["report", p.parent, "--output", t / "out"], OUT), ()),
    "report --bench": ("bench", _slot_file(
        lambda f, t, p: ["report", f["runA"], "--bench", p, "--output", t / "out"], OUT), ()),
    "report --compare": ("compare", _slot_file(
        lambda f, t, p: ["report", f["runA"], "--compare", p, "--output", t / "out"], OUT), ()),
    # a run folder's summary is optional to compare (detections alone), so its absence is no error
    "compare run summary": ("summary", _slot_in_folder(
        "runA", "summary.json", lambda f, t, p: ["compare", p.parent, f["runB"], "--output", t / "out"], OUT),
        ("missing", "folder")),
    # an empty results list is valid; without results.json the message names the run folder (tested below)
    "compare run results": ("results", _slot_in_folder(
        "runA", "results.json", lambda f, t, p: ["compare", p.parent, f["runB"], "--output", t / "out"], OUT),
        ("missing", "folder", "list")),
    "compare --tolerances": ("tolerances", _slot_file(
        lambda f, t, p: ["compare", f["saved"] / "torch.npz", f["saved"] / "onnxruntime.npz", "--no-detections",
                         "--tolerances", p], lambda t: []), ()),
    # a saved run's description is optional
    "compare saved-run description": ("saved_meta", _slot_in_folder(
        "saved", "torch.json", lambda f, t, p: ["compare", p.parent / "torch.npz", p.parent / "onnxruntime.npz",
                                                "--no-detections"], lambda t: []), ("missing", "folder")),
    "collect --run": ("summary", _slot_in_folder(
        "runA", "summary.json", lambda f, t, p: ["collect", "--run", p.parent, "--output", t / "out" / "r.json"],
        OUT), ()),
    "collect --ap": ("evsummary", _slot_file(
        lambda f, t, p: ["collect", "--ap", f"x={p}", "--output", t / "out" / "r.json"], OUT), ()),
    "collect --bench": ("bench", _slot_file(
        lambda f, t, p: ["collect", "--bench", p, "--output", t / "out" / "r.json"], OUT), ()),
    "regress --baseline": ("baseline", _slot_file(
        lambda f, t, p: ["regress", "--baseline", p, "--current", f["current"], "--output", t / "out"], OUT), ()),
    "regress --current": ("current", _slot_file(
        lambda f, t, p: ["regress", "--baseline", f["baseline"], "--current", p, "--output", t / "out"], OUT), ()),
    "evaluate --annotations": ("ann", _slot_file(
        lambda f, t, p: ["evaluate", "--outputs", f["outputs"], "--annotations", p, "--results",
                         t / "out" / "r.json", "--summary", t / "out" / "s.json", "--quiet"], OUT), ()),
    # no ais summary beside the outputs is a folder nothing lists: valid
    "evaluate ais summary": ("ais", _slot_in_folder(
        "outputs", "d_summary.json", lambda f, t, p: [
            "evaluate", "--outputs", p.parent, "--annotations", ANN, "--results", t / "out" / "r.json",
            "--summary", t / "out" / "s.json", "--quiet"], OUT), ("missing", "folder")),
    "merge shard file": ("shard", _slot_in_folder(
        "shards", "results.shard-0-of-2.json", lambda f, t, p: [
            "merge", p, p.parent / "results.shard-1-of-2.json", "--results", t / "out" / "r.json",
            "--summary", t / "out" / "s.json"], OUT), ("folder",)),  # a folder given: its shard is missing
    "merge --annotations": ("ann", _slot_file(
        lambda f, t, p: ["merge", f["shards"], "--annotations", p, "--limit", "2", "--results", t / "out" / "r.json",
                         "--summary", t / "out" / "s.json"], OUT), ()),
    "drift --bounds": ("bounds", _slot_file(_drift_argv("--bounds"), OUT), ()),
    "drift --om-json": ("om_json", _slot_file(_drift_argv("--om-json"), OUT), ()),
}


def _valid_file(files: Dict[str, Path], key: str) -> Path:
    return ANN if key == "ann" else files[key]


def _json_cases() -> List[tuple]:
    cases = []
    for slot, (key, _, skipped) in SLOTS.items():
        for variant in ("missing", "empty", "truncated", "folder", "garbage", "not utf-8", "list", "string", "null",
                        "number", "empty object", "nan"):
            if variant not in skipped:
                cases.append((slot, variant))
        for other in ("results", "bench" if key != "bench" else "summary", "tolerances" if key != "tolerances"
                      else "compare"):
            if other != key:
                cases.append((slot, f"other:{other}"))
    return cases


def _variant_data(files: Dict[str, Path], key: str, variant: str):
    if variant.startswith("other:"):
        return files[variant.split(":", 1)[1]].read_bytes()
    return _generic_variants(_valid_file(files, key))[variant]


# Valid there too: each command reads only the fields it needs. A run summary is optional to compare and
# each of its fields too (an object of other fields is a summary that records none of them); a saved run's
# description is free-form metadata.
ACCEPTED_OTHER = {("report run summary", "other:evsummary"), ("collect --ap", "other:summary"),
                  *{(slot, variant) for slot in ("compare run summary", "compare saved-run description")
                    for variant in ("empty object", "other:summary", "other:bench", "other:compare", "other:evsummary",
                                    "other:shard", "other:ais", "other:tolerances", "other:bounds")},
                  ("compare saved-run description", "nan")}


@pytest.mark.parametrize("slot, variant", [c for c in _json_cases() if c not in ACCEPTED_OTHER])
def test_every_json_input_refuses_hostile_files_in_one_line(valid, tmp_path, capsys, slot, variant):
    key, make, _ = SLOTS[slot]
    argv, path, outputs = make(valid, tmp_path, _variant_data(valid, key, variant))
    _assert_one_line_naming(argv, capsys, path, outputs)


@pytest.mark.parametrize("slot", sorted(SLOTS))
def test_every_swept_slot_accepts_its_valid_file(valid, tmp_path, capsys, slot):
    """The control: the valid file passes, so the variants above fail for what they are, not for a
    missing companion file."""
    key, make, _ = SLOTS[slot]
    argv, _, _ = make(valid, tmp_path, _valid_file(valid, key).read_bytes())
    code, lines, err = _call(argv, capsys)
    assert code in (0, 1, 4) and "error" not in err, (code, err)


# ------------------------------------------------------------------ fields of the wrong type (each was exit 3 or a
# bare KeyError/TypeError message before: see the commit that added this file)
def _mutated(doc, where: Sequence[object], value=KeyError):
    doc = json.loads(json.dumps(doc))
    target = doc
    for step in where[:-1]:
        target = target[step]
    if value is KeyError:
        del target[where[-1]]
    else:
        target[where[-1]] = value
    return json.dumps(doc, allow_nan=True).encode()


FIELD_CASES = {
    # slot: [(where, value), ...]
    "report --compare": [(["candidate"], KeyError), (["detections"], None), (["detections", "strict"], "x"),
                         (["ap", "change"], "x"), (["ap", "reference"], None), (["outputs"], 7),
                         (["seconds_per_image"], "x"), (["kind"], "x")],
    "report --bench": [(["machine"], None), (["inference"], 7), (["inference", 0, "images_per_second"], "x"),
                       (["published", "table"], []), (["host", "images_per_second"], None)],
    "report run summary": [(["images_per_second"], float("nan")), (["stats", 0], float("inf"))],
    "compare run summary": [(["ap"], "x"), (["ap"], None), (["identity"], None), (["identity"], "x"),
                            (["images_per_second"], "fast"), (["ap"], float("nan")), (["image_ids"], 7)],
    "compare run results": [([0, "image_id"], KeyError), ([0, "bbox"], "x"), ([0, "score"], None),
                            ([0, "category_id"], [])],
    "collect --run": [(["skipped"], 7), (["identity"], KeyError), (["batch_size"], "x")],
    "collect --ap": [(["skipped"], 7), (["ap"], KeyError)],
    "collect --bench": [(["machine"], None), (["machine"], 7), (["backend"], KeyError),
                        (["inference", 0, "batch_size"], "x"), (["inference"], None),
                        (["inference", 0, "images_per_second"], None)],
    "compare --tolerances": [(["pairs"], KeyError), (["pairs"], None), (["pairs", "default"], "x"),
                             (["pairs", "default", "default", "cosine"], {"min": 0.99})],
}


@pytest.mark.parametrize("slot, where, value", [(s, w, v) for s, cases in FIELD_CASES.items() for w, v in cases],
                         ids=lambda x: str(x) if not isinstance(x, list) else ".".join(map(str, x)))
def test_a_field_of_the_wrong_type_is_named_not_a_crash(valid, tmp_path, capsys, slot, where, value):
    key, make, _ = SLOTS[slot]
    doc = json.loads(_valid_file(valid, key).read_text())
    argv, path, outputs = make(valid, tmp_path, _mutated(doc, where, value))
    _assert_one_line_naming(argv, capsys, path, outputs)


# ------------------------------------------------------------------ binary inputs
def _npz(path: Path, **arrays) -> bytes:
    np.savez(path, **arrays)
    return path.read_bytes()


def _saved_run_variants(tmp: Path, valid_npz: Path) -> Dict[str, Optional[bytes]]:
    whole = valid_npz.read_bytes()
    ids, sizes = np.array(["1"]), np.array([[64, 48]])
    return {
        "empty": b"", "truncated": whole[: len(whole) // 2], "garbage": bytes(range(256)), "json": b"{}",
        "one .npy": (np.save(tmp / "a.npy", np.zeros(3)), (tmp / "a.npy").read_bytes())[1],
        "keys missing": _npz(tmp / "k.npz", scores=np.zeros((1, 16, 81), np.float32)),
        "scores 1-D": _npz(tmp / "s.npz", scores=np.zeros(3, np.float32), loc=np.zeros((1, 16, 4), np.float32),
                           image_ids=ids, image_sizes=sizes),
        "loc of other priors": _npz(tmp / "l.npz", scores=np.zeros((1, 16, 81), np.float32),
                                    loc=np.zeros((1, 8, 4), np.float32), image_ids=ids, image_sizes=sizes),
        "sizes 1-D": _npz(tmp / "z.npz", scores=np.zeros((1, 16, 81), np.float32),
                          loc=np.zeros((1, 16, 4), np.float32), image_ids=ids, image_sizes=np.array([64, 48])),
        "string scores": _npz(tmp / "t.npz", scores=np.array(["a"]), loc=np.zeros((1, 16, 4), np.float32),
                              image_ids=ids, image_sizes=sizes),
    }


SAVED_RUN_VARIANTS = ["empty", "truncated", "garbage", "json", "one .npy", "keys missing", "scores 1-D",
                      "loc of other priors", "sizes 1-D", "string scores"]


@pytest.mark.parametrize("variant", SAVED_RUN_VARIANTS)
def test_a_hostile_saved_run_is_named(valid, tmp_path, capsys, variant):
    data = _saved_run_variants(tmp_path, valid["saved"] / "torch.npz")[variant]
    hostile = _in_copy(tmp_path, valid["saved"], "torch.npz", data)
    _assert_one_line_naming(["compare", hostile, hostile.parent / "onnxruntime.npz", "--no-detections"], capsys,
                            hostile)


def test_a_run_folder_without_results_is_named(valid, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(valid["runA"], folder)
    (folder / "results.json").unlink()
    _assert_one_line_naming(["compare", folder, valid["runB"], "--output", tmp_path / "out"], capsys, folder,
                            [tmp_path / "out"])


def test_saved_runs_of_other_shapes_are_refused_in_words(valid, tmp_path, capsys):
    """Two valid saved runs of different prior counts (another model): a usage error, not numpy's."""
    from m2det_impl.evaluation.tolerances import save_run

    saved = tmp_path / "saved"
    shutil.copytree(valid["saved"], saved)
    save_run(saved, "torch", np.zeros((1, 8, 81), np.float32), np.zeros((1, 8, 4), np.float32), ["1"], [(64, 48)],
             {"backend": "torch"})
    code, lines, err = _call(["compare", saved / "torch.npz", saved / "onnxruntime.npz", "--no-detections"], capsys)
    assert code == EXIT_BAD_INPUT and len(lines) == 1 and "different shapes" in lines[0], err
    assert not EXCEPTION_NAMES.search(lines[0])


@pytest.mark.parametrize("variant", ["empty", "truncated", "garbage", "json", "one .npy", "folder"])
def test_a_hostile_golden_forward_file_is_named(valid, tmp_path, capsys, variant):
    hostile = tmp_path / "golden.npz"
    if variant == "folder":
        hostile.mkdir()
    else:
        hostile.write_bytes(_saved_run_variants(tmp_path, valid["saved"] / "torch.npz")[variant])
    _assert_one_line_naming(["collect", "--saved-runs", valid["golden"], "--golden-forward", hostile, "--output",
                             tmp_path / "out" / "r.json"], capsys, hostile, [tmp_path / "out"])


def test_an_empty_npy_input_is_named(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.npy").write_bytes(b"")
    _assert_one_line_naming(["infer", "--backend", "simulated-npu", "--sim-ms-per-image", "0", "--inputs", inputs,
                             "--output", tmp_path / "out", "--quiet"], capsys, inputs / "a.npy", [tmp_path / "out"])


# ------------------------------------------------------------------ no new folder after a failure
def _bad_checkpoint(tmp: Path) -> Path:
    path = tmp / "bad.pth"
    path.write_bytes(b"hello, not a checkpoint\n")
    return path


def _corrupt_images(tmp: Path) -> Path:
    folder = tmp / "images"
    folder.mkdir()
    (folder / "COCO_val2014_000000000001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


LEFTOVER_CASES = {
    # command: (argv(files, tmp, out) with a bad input, the file the message names)
    "export": (lambda f, t, o: ["export", "--weights", _bad_checkpoint(t), "--output", o], "bad.pth"),
    "export --int8": (lambda f, t, o: ["export", "--int8", "--calib", t / "no-such-folder", "--output", o],
                      "no-such-folder"),
    "bench": (lambda f, t, o: ["bench", "--backend", "simulated-npu", "--images", _corrupt_images(t), "--limit",
                               "1", "--output", o], "COCO_val2014_000000000001.jpg"),
    "compare --emulate": (lambda f, t, o: ["compare", "--emulate", "fp16", "--onnx", f["onnx512"], "--images",
                                           _corrupt_images(t), "--limit", "1", "--output", o],
                          "COCO_val2014_000000000001.jpg"),
    "compare folders": (lambda f, t, o: ["compare", t / "no-run", f["runB"], "--output", o], "no-run"),
    "drift": (lambda f, t, o: ["drift", "--onnx", f["onnx8"], "--input", t / "none.bin", "--dump", f["dump"],
                               "--output", o], "none.bin"),
    "evaluate": (lambda f, t, o: ["evaluate", "--outputs", f["outputs"], "--annotations", t / "none.json",
                                  "--results", o / "r.json", "--summary", o / "sub" / "s.json"], "none.json"),
    "merge": (lambda f, t, o: ["merge", t / "results.shard-0-of-1.json", "--results", o / "r.json",
                               "--summary", o / "s.json"], "results.shard-0-of-1.json"),
    "collect": (lambda f, t, o: ["collect", "--bench", t / "none.json", "--output", o / "deeper" / "r.json"],
                "none.json"),
    "regress": (lambda f, t, o: ["regress", "--baseline", f["baseline"], "--current", t / "none.json",
                                 "--output", o], "none.json"),
    "report": (lambda f, t, o: ["report", f["runA"], "--bench", t / "none.json", "--output", o], "none.json"),
}


@pytest.mark.parametrize("command", sorted(LEFTOVER_CASES))
def test_a_command_failing_on_bad_input_leaves_no_new_folder(valid, tmp_path, capsys, command):
    """A fresh output path (two levels deep: parents it had to create count too) and a bad input: exit 2,
    one line, and the path is still absent."""
    argv, named = LEFTOVER_CASES[command]
    out = tmp_path / "fresh" / "out"
    if command == "compare --emulate":
        # the forecast builds its fp16 model (and says so) before it decodes the first image: a progress line
        # precedes the error there; the folder is what this test holds
        code, lines, err = _call(argv(valid, tmp_path, out), capsys)
        assert code == EXIT_BAD_INPUT and named in lines[-1] and "internal error" not in err, err
        assert not (tmp_path / "fresh").exists()
        return
    _assert_one_line_naming(argv(valid, tmp_path, out), capsys, Path(named), [tmp_path / "fresh"])


def test_preprocess_stopped_by_a_corrupt_image_leaves_no_new_folder(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(MINI_COCO / "val2014" / f"{STEM}.jpg", images)
    (images / "COCO_val2014_000000000001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _assert_one_line_naming(["preprocess", "--images", images, "--output", tmp_path / "fresh" / "prep", "--quiet"],
                            capsys, images / "COCO_val2014_000000000001.jpg", [tmp_path / "fresh"])


def test_a_failing_job_keeps_a_folder_that_was_there_or_holds_anything(tmp_path):
    """The cleanup's limits: only folders the job created, and only when empty."""
    from m2det_impl._io import output_folder

    there = tmp_path / "there"
    there.mkdir()
    with pytest.raises(RuntimeError), output_folder(there):
        raise RuntimeError("bad input")
    assert there.is_dir()
    with pytest.raises(RuntimeError), output_folder(tmp_path / "new" / "deeper") as folder:
        (folder / "partial.txt").write_text("kept: the failure came after work")
        raise RuntimeError("bad input")
    assert (tmp_path / "new" / "deeper" / "partial.txt").is_file()
    with pytest.raises(RuntimeError), output_folder(tmp_path / "gone" / "deeper"):
        raise RuntimeError("bad input")
    assert not (tmp_path / "gone").exists()

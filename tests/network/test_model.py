"""The network: state-dict manifest, checkpoint loading and its failure modes,
golden weights, and the full M2Det512 forward against the reference."""

import datetime
import json
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from support import shaped_state

from m2det_impl.errors import CheckpointError
from m2det_impl.network.config import get_config
from m2det_impl.network.model import build_model, golden_fill_, load_checkpoint, load_model

pytestmark = pytest.mark.cpu


@pytest.fixture(scope="module")
def manifest(golden_dir):
    return json.loads((golden_dir / "state_dict_m2det512_vgg.json").read_text())


@pytest.fixture(scope="module")
def small_model(small_cfg):
    """The reduced network (support.SMALL_CONFIG_FILE) with golden weights, as ``load_model`` gives every
    run its network: what holds for any network built from these modules is checked on it, a sixth
    of M2Det512's cost (docs/testing.md, "Which tests run on which model")."""
    return load_model(small_cfg, None)


def test_state_dict_equals_reference_manifest(cfg512, manifest):
    """Names, shapes and dtypes of M2Det512 as built (on the meta device: no memory, no weights)."""
    ours = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in _shapes_only(cfg512).state_dict().items()]
    theirs = [(e["name"], e["shape"], e["dtype"]) for e in manifest]
    assert len(ours) == len(theirs) == 887
    assert ours == theirs
    assert sum(int(np.prod(s)) for _, s, _ in ours) == 133_396_415


@pytest.mark.parametrize("size", [320, 704, 800])
def test_other_sizes_share_the_state_dict(size, manifest):
    sd = _shapes_only(get_config(size)).state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(e["name"], e["shape"]) for e in manifest]


def test_leach_is_one_shared_module(cfg512):
    model = _shapes_only(cfg512)
    leaches = list(model.leach)
    assert len(leaches) == 8 and all(m is leaches[0] for m in leaches)
    sd = model.state_dict(keep_vars=True)
    assert sd["leach.0.conv.weight"] is sd["leach.7.conv.weight"]


def test_model_is_in_eval_mode(small_model):
    assert not small_model.training
    assert all(not m.training for m in small_model.modules())


def _tiny_network() -> torch.nn.Module:
    """A conv head and a batch norm under M2Det's names: every kind of tensor the fill has a rule for."""
    net = torch.nn.Module()
    net.conf = torch.nn.ModuleList([torch.nn.Conv2d(8, 6, 3)])
    net.bn = torch.nn.BatchNorm2d(6)
    return net


def test_golden_fill_is_deterministic_and_salted(small_model):
    """Two fills of fresh modules agree on every tensor and a salt changes each of them (a module
    with every kind of tensor the fill has a rule for: the fill is per name, whatever the network);
    the 512's own fill is held to the reference's forward by the golden parity tests; a network's
    fill, through ``load_model``, is spot-checked below (a rule per name and shape, whatever the width)."""
    first = golden_fill_(_tiny_network()).state_dict()
    second = golden_fill_(_tiny_network())
    assert all(torch.equal(tensor, second.state_dict()[name]) for name, tensor in first.items())
    salted = golden_fill_(second, salt=1).state_dict()
    assert not any(torch.equal(salted[name], first[name]) for name in first if "num_batches" not in name)
    # independent spot check of the README's rule for one bias
    import zlib
    rs = np.random.RandomState(zlib.crc32(b"loc.0.bias") & 0xFFFFFFFF)
    expected = (0.05 * rs.standard_normal((24,))).astype(np.float32)
    assert np.array_equal(small_model.state_dict()["loc.0.bias"].numpy(), expected)


# ------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def saved_checkpoints(small_model, tmp_path_factory):
    """The reduced network's golden weights saved plain and with DataParallel's ``module.`` prefix: how a
    checkpoint is read and held to the network does not depend on its width (M2Det512's names and
    shapes are held by the manifest test above)."""
    folder = tmp_path_factory.mktemp("ckpt")
    plain = folder / "plain.pth"
    wrapped = folder / "dataparallel.pth"
    sd = small_model.state_dict()
    torch.save(sd, plain)
    torch.save(OrderedDict(("module." + k, v) for k, v in sd.items()), wrapped)
    return plain, wrapped


@pytest.mark.parametrize("which", [0, 1], ids=["plain", "module-prefix"])
def test_checkpoint_round_trip(which, saved_checkpoints, small_model, small_cfg):
    """Every tensor back as saved, through the path every run takes (``load_model``: read, held to the
    network's names and shapes, loaded)."""
    model = load_model(small_cfg, saved_checkpoints[which])
    ref = small_model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k


def _shapes_only(cfg):
    """The network on the meta device: every name and shape, no memory and no initialisation, which
    is all a checkpoint that does not fit is refused on (it fails before any tensor is copied)."""
    with torch.device("meta"):
        return build_model(cfg)


def test_checkpoint_missing_keys_are_named(tmp_path, cfg512):
    state = shaped_state(cfg512)
    names = list(state)
    path = tmp_path / "partial.pth"
    torch.save(OrderedDict((k, state[k]) for k in names[5:]), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_shapes_only(cfg512), path)
    msg = str(info.value)
    assert str(path) in msg and "missing keys" in msg and names[0] in msg


def test_checkpoint_unexpected_keys_are_named(tmp_path, cfg512):
    path = tmp_path / "extra.pth"
    torch.save(OrderedDict(shaped_state(cfg512), **{"sfam_module.fc.weight": torch.zeros(1)}), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_shapes_only(cfg512), path)
    assert "unexpected keys: sfam_module.fc.weight" in str(info.value)


def test_checkpoint_wrong_shapes_are_named(tmp_path, cfg512):
    """A checkpoint for another class count (VOC, 21 classes) fails on the conf heads."""
    state = shaped_state(cfg512, conf__0__weight=torch.zeros(()).expand(21 * 6, 2048, 3, 3))
    path = tmp_path / "voc.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_shapes_only(cfg512), path)
    assert "conf.0.weight [126, 2048, 3, 3] (model [486, 2048, 3, 3])" in str(info.value)


@pytest.mark.parametrize("content, says", [
    (b"", "not a PyTorch checkpoint: the file is empty"),
    (b"not a checkpoint", "not a PyTorch checkpoint: neither a zip archive (torch.save) nor a pickle; it starts "
                          "with bytes 6e 6f 74 20 61 20 63 68 ('not a ch')"),
    (b"PK\x03\x04garbage", "not a readable PyTorch checkpoint"),
])
def test_unreadable_checkpoint_names_the_file_and_what_was_found(tmp_path, content, says, cfg512):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_model(cfg512, path)
    assert str(path) in str(info.value) and says in str(info.value)
    assert "pickled objects" not in str(info.value)  # random bytes are not blamed on pickled code


def test_a_cut_checkpoint_is_named_as_cut_not_as_a_pytorch_error(tmp_path, cfg512):
    """An interrupted copy of a real torch.save file: one line that says so, without the reader's internals."""
    whole = tmp_path / "whole.pth"
    torch.save({"conf.0.bias": torch.zeros(8)}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:-64])
    with pytest.raises(CheckpointError) as info:
        load_model(cfg512, cut)
    msg = str(info.value)
    assert str(cut) in msg and "cut short or damaged" in msg and f"{cut.stat().st_size} bytes" in msg
    assert "PytorchStreamReader" not in msg and "RuntimeError" not in msg and "\n" not in msg


def test_a_checkpoint_with_pickled_code_names_what_it_holds(tmp_path, cfg512):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "when": datetime.date(2020, 1, 1)}, path)  # not a tensor: refused, never run
    with pytest.raises(CheckpointError) as info:
        load_model(cfg512, path)
    assert "refused: it holds datetime.date, a pickled object other than tensors" in str(info.value)


def test_missing_checkpoint_file(tmp_path, cfg512):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(cfg512, tmp_path / "absent.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("payload executed",))


def test_pickled_code_is_refused_not_run(tmp_path, cfg512, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"x": _Payload()}, handle)
    with pytest.raises(CheckpointError, match="could run code"):
        load_model(cfg512, path)
    assert "payload executed" not in capsys.readouterr().out


# ---------------------------------------------------------------- forward
def test_forward_rejects_wrong_input(small_model):
    with pytest.raises(ValueError, match=r"\[B, 3, 320, 320\]"):
        small_model(torch.zeros(1, 3, 512, 512))


@pytest.fixture(scope="module")
def torch_forward(golden_torch_forward):
    """``golden_model(golden_batch)``, computed once per run (tests/conftest.py)."""
    return golden_torch_forward


def test_forward_output_contract(torch_forward):
    scores, loc = torch_forward
    assert scores.shape == (3, 32760, 81) and loc.shape == (3, 32760, 4)
    assert scores.dtype == loc.dtype == np.float32
    assert np.isfinite(scores).all() and np.isfinite(loc).all()
    assert np.allclose(scores.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("i", [0, 1, 2])
def test_forward_matches_reference(i, torch_forward, golden_forward):
    scores, loc = torch_forward
    ref_loc, ref_scores = golden_forward[f"loc_{i}"], golden_forward[f"scores_{i}"]
    loc_err = np.abs(loc[i] - ref_loc).max() / np.abs(ref_loc).max()
    score_err = np.abs(scores[i, ::8] - ref_scores).max()
    assert loc_err <= 1e-4, f"image {i}: loc max error {loc_err:.3g} of the largest magnitude > 1e-4"
    assert score_err <= 5e-5, f"image {i}: scores max abs error {score_err:.3g} > 5e-5"

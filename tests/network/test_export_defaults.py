"""What export_onnx asks the exporter for when the caller says nothing
(reference section 9): opset 11, the level CANN 5.1's atc accepts, one input
``image`` and the outputs named by what they hold, scores first. Checked on the
exporter's arguments, without exporting (an export takes seconds and 530 MB)."""

import pytest
import torch

from m2det_impl.network.config import get_config
from m2det_impl.network.export import export_onnx

pytestmark = pytest.mark.cpu


class Captured(Exception):
    pass


class Tiny(torch.nn.Module):
    def forward(self, image):
        return image, image


@pytest.mark.parametrize("batch", [None, 2])
def test_export_defaults_to_opset_11_with_named_outputs(tmp_path, monkeypatch, batch):
    seen = {}

    def fake_export(model, args, path, **kwargs):
        seen.update(kwargs, shape=tuple(args[0].shape), training=model.training)
        raise Captured

    monkeypatch.setattr(torch.onnx, "export", fake_export)
    model = Tiny().train()
    with pytest.raises(Captured):
        export_onnx(model, tmp_path / "m.onnx", get_config(512), batch=batch)
    assert seen["opset_version"] == 11
    assert seen["input_names"] == ["image"]
    assert seen["output_names"] == ["scores", "loc"]
    assert seen["shape"] == (batch or 1, 3, 512, 512)
    assert seen["training"] is False  # exported in eval mode
    assert model.training is True     # and handed back as it came
    assert ("dynamic_axes" in seen) == (batch is None)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind

"""The M2Det network (phase "test"), checkpoint loading and golden weights.

The module tree mirrors the reference (VDIGPKU/M2Det) name for name and in the
same registration order, so the published ``m2det512_vgg.pth`` loads with
``strict=True`` and ``state_dict()`` equals ``golden/state_dict_m2det512_vgg.json``
(reference section 2). The forward returns ``(scores, loc)``: softmax scores first,
the order the Ascend post-processing expects.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from m2det_impl._io import PathLike
from m2det_impl.errors import CheckpointError
from m2det_impl.network.config import M2DetConfig

__all__ = [
    "load_model",
    "BasicConv",
    "TUM",
    "M2Det",
    "build_model",
    "load_checkpoint",
    "read_checkpoint",
    "load_state",
    "golden_fill_",
]

# VGG16 layer plan of the reference ('M' maxpool, 'C' maxpool with ceil_mode).
_VGG_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)


class BasicConv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d(eps 1e-5) -> ReLU, named conv/bn/relu."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class TUM(nn.Module):
    """Thinned U-shape Module: an encoder of strided convs and a decoder with
    lateral connections; returns six maps, smallest first.

    ``decoder_sizes`` holds the side of each decoder map after the smallest, in
    decoding order. They are fixed by the input size, and keeping them as Python
    ints means the exported graph carries no shape arithmetic for the resizes.
    """

    def __init__(self, first_level: bool, input_planes: int, side_channel: int,
                 scales: int, smooth: bool, decoder_sizes: Sequence[int]):
        super().__init__()
        self.first_level = first_level
        planes = 2 * input_planes
        in1 = input_planes if first_level else input_planes + side_channel
        self.layers = nn.Sequential()
        self.layers.add_module("0", BasicConv(in1, planes, 3, 2, 1))
        for i in range(scales - 2):
            if i != scales - 3:
                self.layers.add_module(str(len(self.layers)), BasicConv(planes, planes, 3, 2, 1))
            else:
                self.layers.add_module(str(len(self.layers)), BasicConv(planes, planes, 3, 1, 0))
        self.toplayer = nn.Sequential(BasicConv(planes, planes, 1, 1, 0))
        self.latlayer = nn.Sequential()
        for _ in range(scales - 2):
            self.latlayer.add_module(str(len(self.latlayer)), BasicConv(planes, planes, 3, 1, 1))
        self.latlayer.add_module(str(len(self.latlayer)), BasicConv(in1, planes, 3, 1, 1))
        self.is_smooth = smooth
        if smooth:
            self.smooth = nn.Sequential(*[BasicConv(planes, planes, 1, 1, 0) for _ in range(scales - 1)])
        self.decoder_sizes = tuple(int(s) for s in decoder_sizes)

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None = None) -> List[torch.Tensor]:
        if not self.first_level:
            x = torch.cat([x, previous], 1)  # leach output first, then the previous TUM's largest map
        encoded = [x]
        for layer in self.layers:
            x = layer(x)
            encoded.append(x)
        decoded = [self.toplayer[0](encoded[-1])]
        n = len(self.layers)
        for i, lateral in enumerate(self.latlayer):
            side = self.decoder_sizes[i]
            up = F.interpolate(decoded[i], size=(side, side), mode="nearest")
            decoded.append(up + lateral(encoded[n - 1 - i]))
        if not self.is_smooth:
            return decoded
        return [decoded[0]] + [smooth(d) for smooth, d in zip(self.smooth, decoded[1:])]


def _vgg_layers() -> List[nn.Module]:
    layers: List[nn.Module] = []
    in_channels = 3
    for v in _VGG_PLAN:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "C":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    layers += [
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1),  # pool5
        nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),  # conv6
        nn.ReLU(inplace=True),
        nn.Conv2d(1024, 1024, kernel_size=1),  # conv7
        nn.ReLU(inplace=True),
    ]
    return layers


class M2Det(nn.Module):
    """M2Det with a VGG16 backbone, test phase.

    ``forward(image[B,3,S,S])`` returns ``(scores[B,P,C], loc[B,P,4])``.
    """

    def __init__(self, cfg: M2DetConfig):
        super().__init__()
        net = cfg.network
        if net.backbone != "vgg16" or net.sfam:
            raise ValueError(f"only the VGG16 backbone without SFAM is implemented, got {net}")
        self.cfg = cfg
        self.num_classes = net.num_classes
        self.base_out = tuple(net.base_out)
        planes = net.planes
        maps = cfg.feature_maps  # largest first, as the TUMs' outputs in reverse
        decoder_sizes = tuple(reversed(maps))[1:]
        # Registration order matters for state_dict() order: TUMs first, as in the reference.
        for i in range(net.num_levels):
            setattr(self, f"unet{i + 1}", TUM(
                first_level=(i == 0), input_planes=planes // 2,
                side_channel=512 if i == 0 else planes, scales=net.num_scales,
                smooth=net.smooth, decoder_sizes=decoder_sizes,
            ))
        self.base = nn.ModuleList(_vgg_layers())
        self.reduce = BasicConv(512, 256, kernel_size=3, stride=1, padding=1)
        self.up_reduce = BasicConv(1024, 512, kernel_size=1, stride=1)
        self.Norm = nn.BatchNorm2d(planes * net.num_levels)
        # ONE module shared by every level, as the reference builds it ([m] * n).
        leach = BasicConv(512 + 256, planes // 2, kernel_size=(1, 1), stride=(1, 1))
        self.leach = nn.ModuleList([leach] * net.num_levels)
        anchors_per_location = 2 + 2 * len(cfg.anchors.aspect_ratios)
        channels = planes * net.num_levels
        self.loc = nn.ModuleList(
            [nn.Conv2d(channels, 4 * anchors_per_location, 3, 1, 1) for _ in range(net.num_scales)]
        )
        self.conf = nn.ModuleList(
            [nn.Conv2d(channels, self.num_classes * anchors_per_location, 3, 1, 1)
             for _ in range(net.num_scales)]
        )

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self._check_input(image)
        x = image
        base_feats = []
        for k, layer in enumerate(self.base):
            x = layer(x)
            if k in self.base_out:
                base_feats.append(x)
        base_feature = torch.cat(
            (self.reduce(base_feats[0]),
             F.interpolate(self.up_reduce(base_feats[1]), scale_factor=2.0, mode="nearest")),
            1,
        )
        levels = [self.unet1(self.leach[0](base_feature))]
        for i in range(1, len(self.leach)):
            tum = getattr(self, f"unet{i + 1}")
            levels.append(tum(self.leach[i](base_feature), levels[i - 1][-1]))
        num_scales = len(self.loc)
        sources = [torch.cat([lv[s - 1] for lv in levels], 1) for s in range(num_scales, 0, -1)]
        sources[0] = self.Norm(sources[0])
        batch = image.shape[0]
        loc = torch.cat([head(s).permute(0, 2, 3, 1).reshape(batch, -1) for s, head in zip(sources, self.loc)], 1)
        conf = torch.cat([head(s).permute(0, 2, 3, 1).reshape(batch, -1) for s, head in zip(sources, self.conf)], 1)
        scores = torch.softmax(conf.reshape(batch, -1, self.num_classes), dim=-1)
        return scores, loc.reshape(batch, -1, 4)

    def _check_input(self, image: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return
        size = self.cfg.size
        if image.dim() != 4 or tuple(image.shape[1:]) != (3, size, size):
            raise ValueError(
                f"M2Det{size} expects an image batch of shape [B, 3, {size}, {size}], "
                f"got {list(image.shape)}"
            )
        if image.dtype != torch.float32:
            raise ValueError(f"M2Det expects float32 input, got {image.dtype}")


def build_model(cfg: M2DetConfig) -> M2Det:
    """The network for ``cfg`` in eval mode (untrained weights: load or fill them)."""
    return M2Det(cfg).eval()


# ------------------------------------------------------------------ weights
def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    if state and all(k.startswith("module.") for k in state):
        return OrderedDict((k[len("module."):], v) for k, v in state.items())
    return OrderedDict(state)


def _extract_state_dict(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "net"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(
                    isinstance(k, str) and torch.is_tensor(v) for k, v in inner.items()):
                return inner
        if obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
            return obj
    raise CheckpointError(path, f"holds no state dict of tensors (found {type(obj).__name__})")


def _what_the_file_is(path: Path) -> str:
    """Why a file is no checkpoint at all, from its first bytes ('' when it looks like one).

    torch saves a zip archive (``PK``); older releases a pickle (protocol byte
    0x80). Anything else was never a checkpoint: say what was found instead of
    blaming pickled objects."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return ""
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return ""
    if not head:
        return "the file is empty"
    return (f"neither a zip archive (torch.save) nor a pickle; it starts with bytes {head.hex(' ')}"
            + (f" ({head.decode('ascii', 'replace')!r})" if all(32 <= b < 127 for b in head) else ""))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _summarise(names: Sequence[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_checkpoint(model: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load an ``m2det512_vgg.pth``-style checkpoint strictly into ``model``
    (:func:`read_checkpoint`, then :func:`load_state`)."""
    return load_state(model, read_checkpoint(path), path)


def read_checkpoint(path: Union[str, Path]) -> "OrderedDict[str, torch.Tensor]":
    """The state dict of an ``m2det512_vgg.pth``-style checkpoint, or a :class:`CheckpointError`
    saying what the file is instead.

    Strips a ``module.`` prefix (DataParallel). Loads with ``weights_only=True``
    so a file carrying pickled code is refused rather than executed. Needs no
    model, so a bad file is refused before seconds go into building one.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol chatter
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _what_the_file_is(path)
        if found:
            raise CheckpointError(path, f"not a PyTorch checkpoint: {found}") from None
        if "weights only" in str(exc).lower():
            what = re.search(r"GLOBAL ([\w.]+)", str(exc))
            held = f"it holds {what.group(1)}, a pickled object" if what else "it holds pickled objects"
            raise CheckpointError(
                path,
                f"not a readable PyTorch checkpoint (refused: {held} other than tensors, which could run "
                "code; only weights are loaded)",
            ) from None
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files (KeyError for a text file)
        found = _what_the_file_is(path)
        if found:
            raise CheckpointError(path, f"not a PyTorch checkpoint: {found}") from None
        if "zip archive" in str(exc) or "central directory" in str(exc):  # PyTorch's reader of torch.save's zip
            raise CheckpointError(path, f"not a readable PyTorch checkpoint: the zip archive torch.save writes is "
                                        f"cut short or damaged ({path.stat().st_size} bytes; an interrupted copy "
                                        f"or download?)") from None
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({type(exc).__name__}: "
                                    f"{_first_line(exc)})") from None
    return _strip_module_prefix(_extract_state_dict(obj, path))


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Union[str, Path]) -> nn.Module:
    """Load a checkpoint's ``state`` (read from ``path``) strictly into ``model``: missing or
    unexpected keys and wrong shapes raise :class:`CheckpointError` naming them."""
    check_fit(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - e.g. a sparse or complex tensor that cannot be copied in
        raise CheckpointError(path, f"tensors that do not load into this model ({_first_line(exc)})") from None
    return model


def check_fit(model: nn.Module, state: Mapping[str, torch.Tensor], path: Union[str, Path]) -> None:
    """Hold a checkpoint's ``state`` (read from ``path``) to ``model``'s names and shapes, copying
    nothing: missing or unexpected keys and wrong shapes raise :class:`CheckpointError` naming them.
    ``model`` may live on the meta device (no memory), as :func:`load_model` builds it to check first."""
    path = Path(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_summarise(unexpected)}")
        raise CheckpointError(path, "does not fit this model; " + "; ".join(parts))
    wrong = [
        f"{k} {list(state[k].shape)} (model {list(v.shape)})"
        for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(path, "shape mismatch (another input size or class count?): " + _summarise(wrong, 4))


def golden_fill_(model: nn.Module, salt: int = 0) -> nn.Module:
    """Fill ``model`` with the deterministic golden weights of golden/README.md.

    Seeds each tensor from the CRC32 of its name, so two implementations with
    the reference's names get identical weights without a trained checkpoint.
    With the shared ``leach`` module the last name in sorted order wins, as in
    the reference.
    """
    state: Dict[str, torch.Tensor] = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name in sorted(state):
            if name.endswith("num_batches_tracked"):  # a training counter, 0 as built; eval never reads it
                state[name].data.zero_()
                continue
            tensor = state[name]
            shape = tuple(tensor.shape)
            rs = np.random.RandomState((zlib.crc32(name.encode("utf-8")) ^ salt) & 0xFFFFFFFF)
            if name.endswith("running_mean"):
                values = 0.1 * rs.standard_normal(shape)
            elif name.endswith("running_var"):
                values = 0.5 + rs.random_sample(shape)
            elif len(shape) == 4:
                fan_in = shape[1] * shape[2] * shape[3]
                values = rs.standard_normal(shape) * np.sqrt(1.0 / fan_in)
            elif name.endswith(".weight"):
                values = 1 + 0.1 * rs.standard_normal(shape)
            elif name.endswith(".bias"):
                values = 0.05 * rs.standard_normal(shape)
            else:  # pragma: no cover - every M2Det tensor is covered above
                raise ValueError(f"no golden rule for state-dict entry {name}")
            tensor.data.copy_(torch.from_numpy(np.asarray(values, dtype=np.float32)))
    return model


def load_model(cfg: M2DetConfig, weights: Optional[PathLike] = None, salt: int = 0):
    """The network with ``weights`` loaded, or golden weights when none are given. The
    checkpoint is read, and held to the network's names and shapes, before the network is
    built, so a bad file fails at once."""
    if weights is None:
        return golden_fill_(_allocated(cfg), salt=salt)
    state = read_checkpoint(weights)
    with torch.device("meta"):
        check_fit(build_model(cfg), state, weights)  # a misfit refused before any memory is taken
    return load_state(_allocated(cfg), state, weights)


def _allocated(cfg: M2DetConfig) -> M2Det:
    """The network with its tensors allocated but not initialised: :func:`load_model` overwrites
    every one (a strict load, or the golden fill), so PyTorch's default initialisation, about
    2 s of M2Det512's start-up, would be thrown away. Shared modules (``leach``) stay shared."""
    with torch.device("meta"):
        model = build_model(cfg)
    return model.to_empty(device="cpu")

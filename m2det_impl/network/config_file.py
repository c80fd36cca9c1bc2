"""The original repository's config files, read without running them.

VDIGPKU/M2Det describes a model in Python files (``configs/m2det512_vgg.py``):
``model = dict(...)``, ``test_cfg = dict(...)``, ``loss = dict(...)``, plus an
``import os`` and a few ``os.path.join`` lines for dataset folders. The
reference loads them with ``import_module``, which runs whatever the file
holds. A conformance tool is handed such files by people it should not have
to trust, so this reader parses the file with :mod:`ast` and evaluates
literals only: numbers, strings, booleans, ``None``, tuples, lists, dicts,
sets and ``dict(key=value, ...)`` calls. Nothing is imported, called or
executed; a statement that is not a plain assignment (the ``import os``, a
function) is skipped and listed, and a value this reader needs that is not a
literal is an error naming the file, the line and what it found.

The sections read are mapped onto :mod:`m2det_impl.network.config`: the preset of
``model.input_size`` with the file's network, anchors, means and test
settings (``test_cfg.iou`` lands in both ``nms_iou`` and ``soft_nms_sigma``,
as the reference's positional call does, reference section 7).
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from m2det_impl._io import PathLike
from m2det_impl.errors import InputFileError, UsageError
from m2det_impl.logs import get_logger
from m2det_impl.network.config import SUPPORTED_SIZES, AnchorConfig, M2DetConfig, NetworkConfig, TestConfig, get_config

__all__ = [
    "resolve_config",
    "preset_differences",
    "ConfigFile",
    "parse_config_source",
    "config_from_sections",
    "load_config_file",
    "MAX_CONFIG_BYTES",
]

logger = get_logger(__name__)

#: The reference's config files are about 2 KB; anything this large is not one.
MAX_CONFIG_BYTES = 1 << 20
_MAX_DEPTH = 64  # nesting of literal containers; the reference's files use 3
_SECTIONS = ("model", "test_cfg", "loss")  # what the mapping reads; must be literals


class _NotLiteral(Exception):
    """A value this reader does not evaluate (raised inside, reported with the line)."""

    def __init__(self, node: ast.AST, what: str):
        super().__init__(what)
        self.lineno = getattr(node, "lineno", None)


def _literal(node: ast.AST, depth: int = 0) -> Any:
    """The value of a literal expression, or :class:`_NotLiteral`."""
    if depth > _MAX_DEPTH:
        raise _NotLiteral(node, f"literals nested more than {_MAX_DEPTH} deep")
    if isinstance(node, ast.Constant):
        if node.value is Ellipsis:
            raise _NotLiteral(node, "'...' is not a config value")
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, depth + 1)
        if isinstance(value, bool) or not isinstance(value, (int, float, complex)):
            raise _NotLiteral(node, "a sign in front of something that is not a number")
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = []
        for element in node.elts:
            if isinstance(element, ast.Starred):
                raise _NotLiteral(element, "'*' unpacking")
            items.append(_literal(element, depth + 1))
        if isinstance(node, ast.Tuple):
            return tuple(items)
        if isinstance(node, ast.List):
            return items
        return _hashable(node, items, set)
    if isinstance(node, ast.Dict):
        pairs = []
        for key, value in zip(node.keys, node.values):
            if key is None:
                raise _NotLiteral(value, "'**' unpacking")
            pairs.append((_literal(key, depth + 1), _literal(value, depth + 1)))
        return _hashable(node, pairs, dict)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args:
            raise _NotLiteral(node, "dict(...) with positional arguments (only dict(key=value, ...) is read)")
        out = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise _NotLiteral(keyword.value, "'**' unpacking")
            out[keyword.arg] = _literal(keyword.value, depth + 1)
        return out
    raise _NotLiteral(node, _describe(node))


def _hashable(node: ast.AST, items: list, kind: type) -> Any:
    try:
        return kind(items)
    except TypeError:
        raise _NotLiteral(node, f"an unhashable {'key' if kind is dict else 'set element'}") from None


def _describe(node: ast.AST) -> str:
    """What a non-literal is, for the message (never evaluated)."""
    if isinstance(node, ast.Call):
        try:
            name = ast.unparse(node.func)
        except Exception:  # noqa: BLE001 - unparse is best effort on odd trees
            name = "a function"
        return f"a call of {name[:60]}(), which this reader does not run (only literals and dict(...) are read)"
    if isinstance(node, ast.Name):
        return f"the variable {node.id!r}, which this reader does not evaluate (write the value itself)"
    if isinstance(node, ast.Attribute):
        return "an attribute lookup, which this reader does not evaluate"
    if isinstance(node, (ast.BinOp, ast.BoolOp, ast.Compare, ast.IfExp)):
        return "an expression, which this reader does not evaluate (write the value itself)"
    return f"a {type(node).__name__} expression, which is not a literal"


def _assigned_names(target: ast.AST) -> List[str]:
    """Plain names bound by an assignment target (``a``, ``a, b``)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for element in target.elts for n in _assigned_names(element)]
    if isinstance(target, ast.Starred):
        return _assigned_names(target.value)
    return []


def _root_name(target: ast.AST) -> Optional[str]:
    """``model`` for ``model['x']`` or ``model.x.y``: a change to a section in place."""
    while isinstance(target, (ast.Subscript, ast.Attribute)):
        target = target.value
    return target.id if isinstance(target, ast.Name) else None


def _bound_names(node: ast.stmt) -> List[str]:
    """Every name a statement binds anywhere inside it (imports, defs, loops, walrus)."""
    names: List[str] = []
    for sub in ast.walk(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(sub.name)
        elif isinstance(sub, ast.alias):
            names.append((sub.asname or sub.name).split(".")[0])
        elif isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            names.append(sub.id)
    return names


@dataclass(frozen=True)
class ConfigFile:
    """A config file as read: the config, where it differs from the preset of
    its size, and what was skipped (statements not run, keys not used)."""

    path: Path
    config: M2DetConfig
    differences: Tuple[str, ...]
    notes: Tuple[str, ...]
    sections: Dict[str, Any]


def parse_config_source(source: str, path: PathLike = "<config>") -> Tuple[Dict[str, Any], Dict[str, str], List[str]]:
    """Literal top-level assignments of a config file's text, never run.

    Returns ``(values, not_literal, skipped)``: ``values`` maps each name
    assigned a literal to its value (the last assignment wins, as in Python);
    ``not_literal`` maps names assigned something else to why; ``skipped``
    lists the statements that were not assignments (``line 78: import os``).
    Raises :class:`InputFileError` naming ``path`` for text that is not Python,
    for a section this reader needs (``model``, ``test_cfg``, ``loss``) that is
    not a literal or is changed in place, and for a file that rebinds ``dict``.
    """
    try:
        tree = ast.parse(source, filename=str(path), mode="exec")
    except SyntaxError as exc:
        where = f"line {exc.lineno}: " if exc.lineno else ""
        raise InputFileError(path, f"not a Python config file ({where}{exc.msg})") from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise InputFileError(path, f"not a Python config file ({type(exc).__name__}: {str(exc)[:200]})") from None
    values: Dict[str, Any] = {}
    not_literal: Dict[str, str] = {}
    skipped: List[str] = []
    for stmt in tree.body:
        line = getattr(stmt, "lineno", "?")
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            value_node = stmt.value
            for target in targets:
                root = _root_name(target) if isinstance(target, (ast.Subscript, ast.Attribute)) else None
                if root in _SECTIONS:
                    raise InputFileError(path, f"line {line}: changes {root} in place; this reader takes only "
                                               f"literal assignments (write the value into {root} = dict(...))")
            names = [n for t in targets for n in _assigned_names(t)]
            if "dict" in names:
                raise InputFileError(path, f"line {line}: rebinds 'dict'; this reader reads dict(...) as a literal")
            if value_node is None:  # a bare annotation: binds nothing
                continue
            simple = [t for t in targets if isinstance(t, ast.Name)]
            if len(simple) != len(targets):  # unpacking or an attribute target: not a config key
                for name in names:
                    values.pop(name, None)
                    not_literal[name] = f"line {line}: assigned by unpacking, which this reader does not evaluate"
                skipped.append(f"line {line}: {_snippet(source, stmt)}")
                continue
            try:
                value = _literal(value_node)
            except _NotLiteral as exc:
                for name in names:
                    values.pop(name, None)
                    not_literal[name] = f"line {exc.lineno or line}: {exc}"
                continue
            for name in names:
                not_literal.pop(name, None)
                values[name] = value
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring or a stray literal
        bound = _bound_names(stmt)
        if "dict" in bound:
            raise InputFileError(path, f"line {line}: rebinds 'dict'; this reader reads dict(...) as a literal")
        touched = sorted({_root_name(t) for t in _mutation_targets(stmt)} & set(_SECTIONS)
                         | set(bound) & set(_SECTIONS))
        if touched:
            raise InputFileError(path, f"line {line}: changes {touched[0]} outside a literal assignment; this reader "
                                       "does not run statements (write the value into the assignment)")
        for name in bound:
            values.pop(name, None)
            not_literal[name] = f"line {line}: bound by a statement this reader does not run"
        skipped.append(f"line {line}: {_snippet(source, stmt)}")
    for name in _SECTIONS:
        if name in not_literal:
            raise InputFileError(path, f"{name} is not a literal ({not_literal[name]})")
    return values, not_literal, skipped


def _mutation_targets(stmt: ast.stmt) -> List[ast.AST]:
    targets: List[ast.AST] = []
    for sub in ast.walk(stmt):
        if isinstance(sub, (ast.Assign,)):
            targets.extend(sub.targets)
        elif isinstance(sub, (ast.AugAssign, ast.AnnAssign)):
            targets.append(sub.target)
        elif isinstance(sub, ast.Delete):
            targets.extend(sub.targets)
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
            targets.append(sub.func.value)  # model.update(...), test_cfg.pop(...)
    return targets


def _snippet(source: str, stmt: ast.stmt) -> str:
    try:
        text = ast.get_source_segment(source, stmt) or type(stmt).__name__
    except Exception:  # noqa: BLE001 - best effort
        text = type(stmt).__name__
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------- mapping
def _section(values: Dict[str, Any], name: str, path: PathLike, required: bool) -> Dict[str, Any]:
    if name not in values:
        if required:
            raise InputFileError(path, f"no '{name} = dict(...)' assignment (is this an M2Det config file?)")
        return {}
    section = values[name]
    if not isinstance(section, dict):
        raise InputFileError(path, f"{name} must be a dict(...), got {type(section).__name__}")
    bad = [k for k in section if not isinstance(k, str)]
    if bad:
        raise InputFileError(path, f"{name} has a key that is not a string: {bad[0]!r}")
    return section


def _int(path: PathLike, where: str, value: Any, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputFileError(path, f"{where} must be an integer, got {value!r}"[:300])
    if value < low or (high is not None and value > high):
        limits = f">= {low}" if high is None else f"in {low}..{high}"
        raise InputFileError(path, f"{where} must be {limits}, got {value}")
    return value


def _number(path: PathLike, where: str, value: Any, low: float, high: float, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputFileError(path, f"{where} must be a number, got {value!r}"[:300])
    number = float(value)
    if not math.isfinite(number) or number < low or number > high or (open_low and number == low):
        side = "(" if open_low else "["
        raise InputFileError(path, f"{where} must be a number in {side}{low}, {high}], got {value!r}")
    return number


def _bool(path: PathLike, where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputFileError(path, f"{where} must be True or False, got {value!r}"[:300])
    return value


def _numbers(path: PathLike, where: str, value: Any, count: int, low: float, high: float) -> Tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise InputFileError(path, f"{where} must be a list of {count} numbers, got {value!r}"[:300])
    return tuple(_number(path, f"{where}[{i}]", v, low, high, open_low=True) for i, v in enumerate(value))


def _plain(values: Tuple[float, ...]) -> tuple:
    """Whole floats as ints (104.0 -> 104), as the presets spell them."""
    return tuple(int(v) if float(v).is_integer() else v for v in values)


def config_from_sections(values: Dict[str, Any], path: PathLike = "<config>") -> Tuple[M2DetConfig, List[str]]:
    """Map the reference's ``model``/``test_cfg``/``loss`` dicts onto an
    :class:`M2DetConfig` -> (config, notes on keys not used). Values this
    implementation cannot run (another backbone, SFAM, a size without a prior
    layout) are refused naming the key. One function per section below."""
    notes: List[str] = []
    model = _section(values, "model", path, required=True)
    test = _section(values, "test_cfg", path, required=False)
    loss = _section(values, "loss", path, required=False)
    size = _input_size(model, path)
    base = get_config(size)
    network = _network(model, base.network, path, notes)
    anchors = _anchors(model, base.anchors, network, path, notes)
    rgb_means = _rgb_means(model, base.rgb_means, path, notes)
    test_cfg = _test(test, loss, base.test, network, path, notes)
    return M2DetConfig(size=size, anchors=anchors, network=network, test=test_cfg, rgb_means=rgb_means), notes


def _input_size(model: Dict[str, Any], path: PathLike) -> int:
    """``model.input_size``: one of the sizes whose prior layout is published."""
    if "input_size" not in model:
        raise InputFileError(path, "model has no input_size")
    size = _int(path, "model.input_size", model["input_size"], 1, 100000)
    if size not in SUPPORTED_SIZES:
        raise InputFileError(path, f"model.input_size {size}: this implementation has the prior layouts of the "
                                   f"published sizes only ({', '.join(map(str, SUPPORTED_SIZES))})")
    return size


def _network(model: Dict[str, Any], net: NetworkConfig, path: PathLike, notes: List[str]) -> NetworkConfig:
    """``model.m2det_config``: what may change (smooth, planes, levels, classes) and what must not."""
    net_in = model.get("m2det_config", {})
    if not isinstance(net_in, dict):
        raise InputFileError(path, f"model.m2det_config must be a dict(...), got {type(net_in).__name__}")
    changes: Dict[str, Any] = {}
    if "backbone" in net_in:
        if net_in["backbone"] != "vgg16":
            raise InputFileError(path, f"model.m2det_config.backbone {net_in['backbone']!r}: only 'vgg16' is "
                                       "implemented here (the published M2Det512 VGG model)")
    if "sfam" in net_in and _bool(path, "model.m2det_config.sfam", net_in["sfam"]):
        raise InputFileError(path, "model.m2det_config.sfam = True: SFAM is not implemented here (the published "
                                   "models have sfam = False)")
    if "smooth" in net_in:
        changes["smooth"] = _bool(path, "model.m2det_config.smooth", net_in["smooth"])
    if "planes" in net_in:
        planes = _int(path, "model.m2det_config.planes", net_in["planes"], 2, 4096)
        if planes % 2:
            raise InputFileError(path, f"model.m2det_config.planes must be even, got {planes}")
        changes["planes"] = planes
    if "num_levels" in net_in:
        changes["num_levels"] = _int(path, "model.m2det_config.num_levels", net_in["num_levels"], 1, 64)
    if "num_scales" in net_in:
        scales = _int(path, "model.m2det_config.num_scales", net_in["num_scales"], 1, 64)
        if scales != net.num_scales:
            raise InputFileError(path, f"model.m2det_config.num_scales {scales}: this implementation builds "
                                       f"{net.num_scales} prior maps, as every published config does")
    if "num_classes" in net_in:
        changes["num_classes"] = _int(path, "model.m2det_config.num_classes", net_in["num_classes"], 2, 100000)
    if "base_out" in net_in:
        base_out = net_in["base_out"]
        if not isinstance(base_out, (list, tuple)) or tuple(base_out) != tuple(net.base_out):
            raise InputFileError(path, f"model.m2det_config.base_out {base_out!r}: the VGG16 backbone taps layers "
                                       f"{list(net.base_out)}")
    for key in sorted(set(net_in) - {f.name for f in fields(NetworkConfig)} - {"net_family"}):
        notes.append(f"model.m2det_config.{key} not used")
    return replace(net, **changes)


def _anchors(model: Dict[str, Any], base: AnchorConfig, network: NetworkConfig, path: PathLike,
             notes: List[str]) -> AnchorConfig:
    """``model.anchor_config``: the step and size patterns, one per prior map (sizes: one more)."""
    anchors_in = model.get("anchor_config")
    if anchors_in is not None and not isinstance(anchors_in, dict):
        raise InputFileError(path, f"model.anchor_config must be a dict(...), got {type(anchors_in).__name__}")
    anchors_in = anchors_in or {}
    anchor_changes: Dict[str, Any] = {}
    if "step_pattern" in anchors_in:
        anchor_changes["step_pattern"] = _plain(_numbers(path, "model.anchor_config.step_pattern",
                                                         anchors_in["step_pattern"], network.num_scales, 0, 1e6))
    if "size_pattern" in anchors_in:
        anchor_changes["size_pattern"] = _plain(_numbers(path, "model.anchor_config.size_pattern",
                                                         anchors_in["size_pattern"], network.num_scales + 1, 0, 100))
    for key in sorted(set(anchors_in) - {"step_pattern", "size_pattern"}):
        notes.append(f"model.anchor_config.{key} not used")
    return replace(base, **anchor_changes)


def _rgb_means(model: Dict[str, Any], base: Tuple[float, float, float], path: PathLike,
               notes: List[str]) -> Tuple[float, ...]:
    """``model.rgb_means``, and a note for each other ``model`` key this implementation does not use."""
    rgb_means = base
    if "rgb_means" in model:
        rgb_means = tuple(float(v) for v in _numbers(path, "model.rgb_means", model["rgb_means"], 3, -1e6, 1e6))
    used_model = {"input_size", "m2det_config", "anchor_config", "rgb_means"}
    training_only = {"type", "init_net", "pretrained", "p", "save_eposhs", "weights_save"}
    for key in sorted(set(model) - used_model - training_only):
        notes.append(f"model.{key} not used")
    return rgb_means


def _test(test: Dict[str, Any], loss: Dict[str, Any], base: TestConfig, network: NetworkConfig, path: PathLike,
          notes: List[str]) -> TestConfig:
    """``test_cfg`` (top-k, the soft-NMS iou that is positionally its sigma, thresholds) and ``loss.bkg_label``."""
    test_changes: Dict[str, Any] = {}
    if "topk" in test:
        test_changes["topk"] = _int(path, "test_cfg.topk", test["topk"], 0)
    if "iou" in test:
        iou = _number(path, "test_cfg.iou", test["iou"], 0.0, 1.0, open_low=True)
        # cpu_soft_nms(dets, cfg.test_cfg.iou, method=1): positionally the iou is sigma.
        test_changes["nms_iou"] = iou
        test_changes["soft_nms_sigma"] = iou
    if "soft_nms" in test:
        test_changes["soft_nms"] = _bool(path, "test_cfg.soft_nms", test["soft_nms"])
    if "score_threshold" in test:
        test_changes["score_threshold"] = _number(path, "test_cfg.score_threshold", test["score_threshold"], 0.0, 1.0)
    if "keep_per_class" in test:
        test_changes["keep_per_class"] = _int(path, "test_cfg.keep_per_class", test["keep_per_class"], 1)
    for key in sorted(set(test) - {"topk", "iou", "soft_nms", "score_threshold", "keep_per_class", "cuda",
                                   "save_folder"}):
        notes.append(f"test_cfg.{key} not used")
    if "bkg_label" in loss:
        test_changes["background_label"] = _int(path, "loss.bkg_label", loss["bkg_label"], 0,
                                                network.num_classes - 1)
    return replace(base, **test_changes)


def preset_differences(cfg: M2DetConfig) -> List[str]:
    """Where ``cfg`` departs from the published preset of its size."""
    preset = get_config(cfg.size)
    out = []
    for part in ("network", "anchors", "test"):
        mine, theirs = getattr(cfg, part), getattr(preset, part)
        for f in fields(mine):
            a, b = getattr(mine, f.name), getattr(theirs, f.name)
            if a != b:
                out.append(f"{part}.{f.name} = {a!r} (preset {b!r})")
    if tuple(cfg.rgb_means) != tuple(preset.rgb_means):
        out.append(f"rgb_means = {cfg.rgb_means!r} (preset {preset.rgb_means!r})")
    return out


def load_config_file(path: PathLike) -> ConfigFile:
    """Read a reference config file (``configs/m2det512_vgg.py``) without running it.

    Raises :class:`InputFileError` naming the file for a missing or unreadable
    file, text that is not Python, a needed section that is not a literal, and
    values this implementation cannot run.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "config file not found")
    if not path.is_file():
        raise InputFileError(path, "expected a config file, found a folder or a device")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise InputFileError(path, f"{size} bytes is too large for a config file (limit {MAX_CONFIG_BYTES})")
        raw = path.read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot read config file ({exc.strerror or exc})") from None
    try:
        source = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputFileError(path, f"not UTF-8 text (byte {exc.start}): not a Python config file") from None
    values, not_literal, skipped = parse_config_source(source, path)
    cfg, notes = config_from_sections(values, path)
    notes = ([f"not run: {s}" for s in skipped] + [f"not evaluated: {name} ({why})" for name, why in not_literal.items()
                                                        if "bound by a statement" not in why]
             + notes)
    return ConfigFile(path=path, config=cfg, differences=tuple(preset_differences(cfg)), notes=tuple(notes),
                      sections={k: v for k, v in values.items() if k in _SECTIONS})


def resolve_config(size: Optional[int] = None, config_file: Optional[PathLike] = None) -> M2DetConfig:
    """The config a job runs with: the original repository's config file when
    given (its departures from the preset are logged), else the preset of
    ``size`` (default 512). A size that contradicts the file is refused."""
    if config_file is None:
        return get_config(512 if size is None else size)
    read = load_config_file(config_file)
    if size is not None and size != read.config.size:
        raise UsageError(f"--size {size} contradicts {config_file} (model.input_size {read.config.size})")
    for line in read.differences:
        logger.info(f"config {config_file}: {line}")
    return read.config

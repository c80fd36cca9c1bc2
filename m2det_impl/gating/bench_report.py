"""What ``m2det bench`` records and shows beside its figures: the machine that
measured them and the guide's table with this run's figures beside the
published ones. Presentation only; the figures are measured in
:mod:`m2det_impl.gating.bench`.
"""

from __future__ import annotations

import platform
import statistics
from typing import Dict

from m2det_impl.errors import M2DetError
from m2det_impl.gating.bench import WALL_CLOCK_LABEL, published_record
from m2det_impl.published import DEFAULT_PUBLISHED, HOST_SCRIPTS_IMAGES_PER_SECOND, throughput_table

__all__ = ["machine_info", "bench_markdown"]


def machine_info() -> Dict[str, object]:
    """What decides the numbers: the machine's identity (CPU model, cores, NPU
    SoC, CANN and driver versions, GPU; :func:`m2det_impl.machine.machine_identity`),
    plus the architecture under ``machine``, Python and the library versions."""
    from m2det_impl.gating.machine import machine_identity

    info: Dict[str, object] = dict(machine_identity())
    info.update({"machine": platform.machine(), "python": platform.python_version()})
    try:
        from m2det_impl.environment import library_versions

        info["versions"] = library_versions()
    except Exception:  # noqa: BLE001 - information only
        pass
    return info


def _weights(record) -> str:
    from m2det_impl.gating.report import weights_label

    return weights_label({"weights": record})


def bench_markdown(data: Dict[str, object]) -> str:
    """The guide's table with this run's figures beside the published ones."""
    published = data.get("published") or published_record()
    table = published["table"]
    try:
        t4 = throughput_table(DEFAULT_PUBLISHED, "T4")
    except M2DetError:  # the guide's T4 column is information only
        t4 = {}
    clock = next((row.get("execute_clock") for row in data["inference"] if row.get("execute_clock")), None)
    lines = [f"# m2det bench: {data['backend']} (M2Det{data['size']})", "",
             f"Machine: {data['machine'].get('cpu')} ({data['machine'].get('cores')} cores)", "",
             f"Published: **{published['name']}** ({published['source']})", "",
             *([f"Weights: {_weights(data['weights'])}", ""] if data.get("weights") else []),
             "Pure inference is ais_bench's figure, 1000 * batch / mean(execute ms)"
             + (f", execute time: {clock}" if clock else "") + f"; wall clock: {WALL_CLOCK_LABEL}.", "",
             "End to end runs over all the images, each repeat paired with a repeat of pure inference over "
             "the same images and batches (wall clock): that paired figure is the ratio's denominator.", "",
             f"| batch | pure inference img/s | wall clock img/s | end to end img/s | paired pure img/s "
             f"(wall clock) | e2e / paired pure | host work in | {published['platform']} published "
             f"({published['name']}) | T4 published (guide) |",
             "|---|---|---|---|---|---|---|---|---|"]
    e2e = {row["batch_size"]: row for row in data.get("end_to_end", [])}

    def fmt(value):
        return "not measured" if value is None else f"{value:.3f}"

    for row in data["inference"]:
        b = row["batch_size"]
        e = e2e.get(b)
        lines.append(
            f"| {b} | {fmt(row.get('images_per_second'))} | {fmt(row.get('wall_clock_images_per_second'))} | "
            + (f"{e['images_per_second']:.3f} | {fmt(e.get('pure_images_per_second'))} | {e['ratio']:.1%} | "
               f"{e.get('host', 'threads')}" if e else "- | - | - | -")
            + f" | {table.get(str(b), '-')} | {t4.get(b, '-')} |"
        )
    for b, e in e2e.items():
        if e.get("results_dicts_s") and e.get("host") == "processes":  # the thread mode builds them in the run
            per_image_ms = 1000.0 * statistics.median(e["results_dicts_s"]) / max(e["images"], 1)
            lines += ["", f"End to end at batch {b} stops when every image's detections are in the calling "
                          f"process (and journaled when the run has a journal); building the COCO result dicts "
                          f"from them afterwards took {per_image_ms:.2f} ms per image (counted in: "
                          f"{e['with_dicts_images_per_second']:.3f} img/s)."]
    versus = data.get("versus")
    if versus:
        lines += ["", f"Side by side, pure inference, repeats alternating: **{versus['backend']}** against "
                      f"{data['backend']}", "",
                  f"| batch | {data['backend']} wall clock img/s | {versus['backend']} wall clock img/s | "
                  f"speed ratio (wall clock) |", "|---|---|---|---|"]
        mine = {row["batch_size"]: row for row in data["inference"]}
        for row in versus["inference"]:
            b = row["batch_size"]
            lines.append(f"| {b} | {fmt(mine[b]['wall_clock_images_per_second'])} | "
                         f"{fmt(row['wall_clock_images_per_second'])} | **{versus['speed_ratio'][str(b)]:.2f}x** |")
    host = data.get("host")
    if host:
        lines += ["", f"Host side (decode + preprocess + post-process, no backend): "
                      f"**{host['images_per_second']:.1f} images/s** over {host['images']} images "
                      f"(the guide's scripts: about {HOST_SCRIPTS_IMAGES_PER_SECOND:g})."]
    return "\n".join(lines) + "\n"

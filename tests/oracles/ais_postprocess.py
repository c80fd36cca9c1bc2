"""Oracle: how the guide's post-processing finds its inputs in ``--is_ais_infer`` mode.

An independent re-reading, from notes on Ascend ModelZoo-PyTorch's
``ACL_PyTorch/contrib/cv/detection/M2Det/M2Det_postprocess.py`` (reference
section 9), of the part that matters to the file layout, sharing no code with
``m2det_impl``:

- open the ``--bin_summary_path`` json (``<output>/<folder>_summary.json``,
  beside the output folder) and walk ``filesinfo``: each sample's image name is
  ``infiles[0]``'s base name cut at its FIRST dot; each of its first two
  ``outfiles`` maps, by its base name cut at the LAST ``_``, to that image;
- the stems are the names in ``--bin_data_path`` holding "bin", cut at the
  last ``_``, in sorted order;
- ``<stem>_0.bin`` is scores, float32 reshaped ``[32760, 81]``; ``<stem>_1.bin``
  is loc, float32 reshaped ``[1, 32760, 4]``; a missing file is an error.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

import numpy as np


def read_ais_outputs(bin_data_path: str, bin_summary_path: str) -> Tuple[List[str], Dict[str, tuple]]:
    """(image names in the order the guide processes them, image name -> (scores, loc))."""
    with open(bin_summary_path) as f:
        summary = json.load(f)
    name_dic = {}
    for value in summary["filesinfo"].values():
        img_name = value["infiles"][0].split("/")[-1].split(".")[0]
        for k in (0, 1):
            out_name = os.path.basename(value["outfiles"][k])
            name_dic[out_name[:out_name.rfind("_")]] = img_name
    stems = sorted({name[:name.rfind("_")] for name in os.listdir(bin_data_path) if "bin" in name})
    order, outputs = [], {}
    for stem in stems:
        base = os.path.join(bin_data_path, stem)
        for path in (base + "_0.bin", base + "_1.bin"):
            if not os.path.exists(path):
                raise FileNotFoundError(f"[ERROR] file not exist: {path}")
        scores = np.fromfile(base + "_0.bin", dtype="float32").reshape([32760, 81])
        loc = np.fromfile(base + "_1.bin", dtype="float32").reshape([1, 32760, 4])
        image = name_dic[stem]
        order.append(image)
        outputs[image] = (scores, loc)
    return order, outputs

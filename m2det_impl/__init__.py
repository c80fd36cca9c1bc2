"""M2Det (VGG16, COCO) inference pipeline: the executable specification of the
reference implementation, for deployments through ONNX to Ascend 310P NPUs.

The stages follow the data's path; see README.md for the map.
"""

from m2det_impl import logs as _logs  # noqa: F401 - the package logger and its null handler

__version__ = "0.1.0"

"""Names shared by the ONNX export and what reads it back (kept apart so that the graph
module and the exporter do not import each other)."""

from __future__ import annotations

# Name of the graph output of an export with decoding and NMS inside: float32[B, D, 6].
DETECTIONS_TENSOR = "detections"
# The ``output`` entry of the file's metadata: what the graph returns.
KIND_DETECTIONS = "detections"  # decoded, NMS'd, padded detections
KIND_RAW = "raw"  # the per-level head outputs
# Class value of the padding rows of the detections (their boxes and scores are 0).
PAD_LABEL = -1

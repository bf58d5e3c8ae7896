"""Image operations: numpy arrays in, numpy arrays out, no storage.

Owns decoding bytes (:mod:`.decode`), restoration of damaged scans
(:mod:`.restore`), exposure and contrast (:mod:`.exposure`), the edge filters
(:mod:`.edges`), histograms, statistics and masks (:mod:`.measure`), the
declarative pipeline and its runner (:mod:`.pipeline`), synthetic scans
(:mod:`.synth`), quality metrics (:mod:`.metrics`) and pictures (:mod:`.viz`).
Imports nothing from the store, training or prediction.
"""

from xraycore.image.decode import ImageDecodeError, decode_image
from xraycore.image.pipeline import PipelineSpec, run_pipeline

__all__ = ["ImageDecodeError", "PipelineSpec", "decode_image", "run_pipeline"]

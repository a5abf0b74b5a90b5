"""Weight import: keras-applications HDF5, Keras 3 ``.weights.h5`` / ``.keras``, and torchvision
``state_dict`` files (``.pth``/``.pt``/``.safetensors``) onto the exporter's Keras-named layers.

``load_weights`` returns a :class:`~sepconv.export.weights.WeightSource` for ``build_network``; its
``finish()`` (after the build, before anything is written) refuses unused tensors.
"""

from sepconv.export.importers.detect import FORMATS, detect_format
from sepconv.export.importers.load import build_imported, load_weights, read_weight_file
from sepconv.export.importers.source import ImportedWeights, ImportReport

__all__ = ["FORMATS", "ImportReport", "ImportedWeights", "build_imported", "detect_format", "load_weights",
           "read_weight_file"]

"""sepconv: MobileNet-style networks built straight into ONNX and served from ONNX Runtime."""

__version__ = "0.1.0"

"""Serving exported ONNX models with ONNX Runtime."""

import torchvision_compat  # noqa: F401  (must run before anything imports torchvision)

"""Training, evaluation and ONNX export for long-tailed image recognition (`python -m training --help`)."""

import torchvision_compat  # noqa: F401  (must run before anything imports torchvision)

"""Training, evaluation and ONNX export for long-tailed image recognition (`python -m training --help`)."""

import torchvision_compat  # noqa: F401  (must run before anything imports torchvision)
import training.methods  # noqa: F401,E402  (registers every method, so a config can name any of them)

"""Make `import torchvision` work on the CPU build of torch.

The registry's torchvision 0.28.0 wheel is built against CUDA torch. On torch 2.13.0+cpu its `_C.so`
fails to load, and torchvision then registers fake kernels for `torchvision::nms` / `qnms`, ops that
were never defined, so `import torchvision` raises "operator torchvision::nms does not exist"
(pytorch/vision#9085). transformers and diffusers import torchvision in their availability checks,
so they fail too.

The fix defines the two op schemas torchvision expects, and only when its compiled library cannot
be loaded. It must run before anything imports torchvision, which is why every entry point
(`models`, `training`, `inference`, `app.py`, `tests/conftest.py`) imports this module first.
On a machine where `_C.so` loads (CUDA torch) it does nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keep the Library object alive: dropping it unregisters the ops


def _torchvision_extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to patch
    import torch

    for folder in spec.submodule_search_locations:
        for name in os.listdir(folder):
            if name.startswith("_C") and name.endswith((".so", ".pyd")):
                try:
                    torch.ops.load_library(os.path.join(folder, name))
                    return True
                except (OSError, RuntimeError):
                    return False
    return False


def apply() -> None:
    global _library
    if "torchvision" in sys.modules or _library is not None:
        return
    if _torchvision_extension_loads():
        return
    import torch

    missing = [op for op in _SCHEMAS if not _op_exists(torch, op)]
    if not missing:
        return
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for op in missing:
        _library.define(_SCHEMAS[op])


def _op_exists(torch_module, op: str) -> bool:
    try:
        getattr(torch_module.ops.torchvision, op)
        return True
    except (AttributeError, RuntimeError):
        return False


apply()

"""DLSA: dynamic label-space adjustment on frozen features (Xu et al., ECCV 2022; docs/methods.md §2).

    python -m training train --config configs/cifar10_lt/dlsa.yaml --output-dir runs/dlsa

On top of a trained run (`method_options.base_checkpoint`): extract its features once, then at every depth
fit a flow (training/methods/flow_training.py) to the samples still unassigned, send the 30% it models best to a
cluster-aided classifier and recurse on the rest; a regular classifier takes what is left. The result is
one `DlsaModel` (images → logits, training/methods/dlsa_model.py) that evaluates and exports like any other model.

Each stage is saved as soon as it is done (`stage<d>`, `regular`), so `--resume` continues with the next one.
Classifier epochs are selected on the validation split; the test-selected choice is recorded as the oracle.
"""

from __future__ import annotations

from pathlib import Path

from training.methods.base import Method
from training.methods.dlsa_fit import fit_dlsa
from training.methods.dlsa_model import DlsaModel, DlsaOptions
from training.registry import register_method


@register_method("dlsa")
class DlsaMethod(Method):
    """Not trained end to end: `fit` replaces the trainer's epoch loop (training/methods/dlsa_fit.py)."""

    options_class = DlsaOptions
    fits_itself = True

    def build_model(self) -> DlsaModel:
        """An untrained DlsaModel of the right shapes (what a checkpoint restores into)."""
        backbone = self.config.model.build(self.num_classes)
        return DlsaModel(backbone, self.num_classes, self.options, self.config.run.seed)

    @classmethod
    def fit(cls, config, output_dir, resume: bool = False) -> dict:
        return fit_dlsa(cls, config, Path(output_dir), resume)

"""Training methods, one module each; importing this package registers them all (training/registry.py).
The protocol a method implements is `training.methods.base.Method`."""

from training.methods import concutmix, dlsa, erm, sau  # noqa: F401  (each registers its method)

"""Methods by name, as timm registers models: each method module decorates its class with `@register_method`.

    @register_method("concutmix")
    class ConCutMixMethod(Method): ...

    method_class("concutmix")           # the class, e.g. to parse its options when a config is loaded
    build_method(config, class_counts)  # an instance for a run

`training/methods/__init__.py` imports every method module, and `training/__init__.py` imports that package, so
the registry is complete whenever anything of `training` is in use. A new method is one module there.
"""

from __future__ import annotations

from training.errors import ConfigError

_METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator: make a `training.methods.base.Method` subclass available as `method: <name>`."""

    def register(cls: type) -> type:
        if name in _METHODS:
            raise ValueError(f"method '{name}' is registered twice ({_METHODS[name].__name__}, {cls.__name__})")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return register


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type:
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'; available: {', '.join(list_methods())}")
    return _METHODS[name]


def build_method(config, class_counts):
    """The config's method for a training set with these per-class counts (its options are already parsed)."""
    return method_class(config.method)(config, class_counts)

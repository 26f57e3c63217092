"""The errors a training command turns into a one-line message (`python -m training` exits 2 on them)."""


class ConfigError(ValueError):
    """A config (file, `--set` override or method option) that cannot be used; the message says which key and why."""

"""The one table of request parameters and limits, shared by the CLI, the HTTP service and the app.

Every surface passes what it received to `check(name, value, limits)`, which returns the value in its canonical
type or raises `ParameterError` with one sentence naming the parameter, what it accepts and what it got. So
`top_k=1.5`, `count=true`, `guidance=NaN` or `top_k=10**9` get the same answer everywhere; nothing is clamped or
truncated silently. The upper bounds that a server operator may change (files per request, images per
generation, steps, bytes, pixels) come from `Limits`; the others are fixed here.

The README's "Limits" table is this table (`markdown_table`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_MAX_PIXELS = 40_000_000  # per image, checked before its pixels are decoded


@dataclass(frozen=True)
class Limits:
    """What a server (or the app, or the CLI) accepts per request; the operator's settings."""

    max_upload_bytes: int = 25 * 2**20  # per file
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image, checked before decoding the pixels
    max_batch: int = 32  # images per classification request
    # The pixels all the images of one classification request declare, checked before any is decoded: ten images at
    # the per-image limit, or a full batch of 12-megapixel photos. Decoding costs time in proportion.
    max_request_pixels: int = 10 * DEFAULT_MAX_PIXELS
    max_parallel_decodes: int = 2  # images decoded at the same time, over all requests: each holds its pixels
    max_generate: int = 16  # images per generation request
    max_steps: int = 100  # denoising steps per generation request
    max_waiting_generations: int = 4  # requests queued behind the one running; more are refused

    @property
    def max_upload_text(self) -> str:
        return f"{self.max_upload_bytes / 2**20:g} MB"

    def file_too_large(self, name: str, size_bytes: int) -> str | None:
        """The sentence refusing a file of `size_bytes`, or None when it is within the limit (HTTP and the CLI)."""
        if size_bytes <= self.max_upload_bytes:
            return None
        return f"{name} is {size_bytes / 2**20:.1f} MB; the limit is {self.max_upload_text} per file"


class ParameterError(ValueError):
    """A request parameter outside the table; the message is the sentence every surface shows."""


@dataclass(frozen=True)
class Parameter:
    name: str
    kind: type  # int or float
    low: float
    high: float | str  # a number, or the name of the `Limits` field that bounds it
    meaning: str

    def upper(self, limits: Limits) -> float:
        return getattr(limits, self.high) if isinstance(self.high, str) else self.high


PARAMETERS = {p.name: p for p in (
    Parameter("top_k", int, 1, 20, "classes listed per image"),
    Parameter("count", int, 1, "max_generate", "images per generation"),
    Parameter("steps", int, 1, "max_steps", "denoising steps"),
    Parameter("guidance", float, 0.0, 30.0, "classifier-free guidance scale (1 = none)"),
    Parameter("seed", int, 0, 2**62 - 1, "generation seed"),
    Parameter("first_index", int, 0, 2**31 - 1, "index of the first generated image in its class"),
    Parameter("tau", float, -5.0, 5.0, "post-hoc logit adjustment: logits − τ·log(prior)"),
)}


def check(name: str, value, limits: Limits = Limits()):
    """`value` as the parameter's type, if it is one and lies within the table's bounds; else ParameterError.

    Integers must be integral numbers (3 or 3.0, not 3.5, not true/false, not "3"); floats must be finite numbers.
    """
    parameter = PARAMETERS[name]
    low, high = parameter.low, parameter.upper(limits)
    accepted = f"{'an integer' if parameter.kind is int else 'a number'} from {_number(low)} to {_number(high)}"
    problem = ParameterError(f"{name} must be {accepted} ({parameter.meaning}); got {shown_value(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise problem
    if isinstance(value, float) and not math.isfinite(value):
        raise problem
    if parameter.kind is int:
        if value != int(value):
            raise problem
        value = int(value)
    else:
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float (JSON allows any number of digits)
            raise problem from None
    if not low <= value <= high:
        raise problem
    return value


def check_text(name: str, text: str, limits: Limits = Limits()):
    """`check` for a value typed as text (a command-line argument, an HTML form field): "3" is 3, "1.5" is 1.5,
    so the CLI, a form and a JSON body get the same sentence for the same number."""
    return check(name, number_from_text(text), limits)


def number_from_text(text: str):
    """The int or float that `text` spells ("3", " 1.5", "1e3", "nan"); anything else stays the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
    return text


def shown_value(value) -> str:
    # A hostile request may send megabytes where a number belongs; the answer quotes only the start of it.
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}... ({len(text):,} characters)"


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def markdown_table(limits: Limits = Limits()) -> str:
    """The table for people (README "Limits"), with this server's bounds."""
    rows = ["| parameter | accepts | meaning |", "|---|---|---|"]
    for p in PARAMETERS.values():
        kind = "integer" if p.kind is int else "number"
        rows.append(f"| `{p.name}` | {kind}, {_number(p.low)} to {_number(p.upper(limits))} | {p.meaning} |")
    rows += [f"| files per classification | at most {limits.max_batch} | `--max-batch` |",
             f"| bytes per file | at most {limits.max_upload_text} | `--max-upload-mb` |",
             f"| pixels per image | at most {limits.max_pixels:,} (checked before decoding) | `--max-pixels` |",
             f"| pixels per classification | at most {limits.max_request_pixels:,} over all its images (checked before "
             "decoding) | `--max-request-pixels` |",
             f"| images decoded at once | at most {limits.max_parallel_decodes}, over all requests (a WebP takes every "
             "slot) | `--max-parallel-decodes` |"]
    return "\n".join(rows)

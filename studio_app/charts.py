"""The long-tail pictures, as inline SVG inside HTML: the τ curve with the slider's position, accuracy per class
against its training count (log axis), the confusion matrix and a reliability diagram per group.

SVG because Gradio renders it with no plotting library and nothing fetched (a Space may be offline), and
because Gradio's own plots have no log axis and no heat map. Every chart has a viewBox and width 100%, so it
shrinks to a phone's width instead of overflowing. The numbers come from the model card (inference/card.py:
`tau_curve`, `long_tail`), measured on the test set at export.
"""

from __future__ import annotations

import html
import math

from inference.card import GROUPS, ModelCard, group_name
from studio_app.render import GROUP_COLOURS

OVERALL_COLOUR = "#333333"
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 360, 220, 40, 10, 14, 34  # the plot area inside each SVG, in its units


def _svg(body: str, title: str, height: int = HEIGHT, width: int = WIDTH) -> str:
    return (f'<svg class="lt-chart" viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}" '
            f'style="width:100%;max-width:{width * 1.6:.0f}px;height:auto;font-family:sans-serif;font-size:10px">'
            f"<title>{html.escape(title)}</title>{body}</svg>")


def _axes(x_label: str, y_label: str, y_ticks=(0, 25, 50, 75, 100)) -> str:
    """The frame, the y grid in percent, and the axis titles."""
    bottom = HEIGHT - BOTTOM
    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{bottom - TOP}" fill="none" '
             'stroke="#999" stroke-width="0.6"/>']
    for tick in y_ticks:
        y = _y(tick)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ccc" stroke-width="0.4"/>'
                     f'<text x="{LEFT - 4}" y="{y + 3:.1f}" text-anchor="end" fill="currentColor">{tick}</text>')
    parts.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 4}" text-anchor="middle" '
                 f'fill="currentColor">{html.escape(x_label)}</text>')
    parts.append(f'<text transform="translate(10 {(TOP + bottom) / 2}) rotate(-90)" text-anchor="middle" '
                 f'fill="currentColor">{html.escape(y_label)}</text>')
    return "".join(parts)


def _y(percent: float) -> float:
    return HEIGHT - BOTTOM - (HEIGHT - BOTTOM - TOP) * max(0.0, min(100.0, percent)) / 100


def _x(value: float, low: float, high: float) -> float:
    return LEFT + (WIDTH - LEFT - RIGHT) * (value - low) / ((high - low) or 1)


def legend(entries: list[tuple[str, str]]) -> str:
    items = "".join(f'<span style="margin-right:1em;white-space:nowrap"><span style="display:inline-block;width:1.2em;'
                    f'height:0.25em;vertical-align:middle;background:{colour};margin-right:0.3em"></span>{name}</span>'
                    for name, colour in entries)
    return f'<div style="font-size:0.9em;margin:0.2em 0">{items}</div>'


def _series(curve: list[dict]) -> list[tuple[str, str, list[tuple[float, float]]]]:
    series = [("overall", OVERALL_COLOUR, [(p["tau"], p["overall"]) for p in curve])]
    for group in GROUPS:
        name = group_name(group)
        points = [(p["tau"], p["groups"].get(name)) for p in curve if p["groups"].get(name) is not None]
        if points:
            series.append((name, GROUP_COLOURS[group], points))
    return series


def tau_curve_svg(curve: list[dict], tau: float) -> str:
    """Test accuracy overall and per group against τ, with a marker at the slider's τ (clamped to the grid)."""
    low, high = curve[0]["tau"], curve[-1]["tau"]
    series = _series(curve)
    parts = [_axes("τ (0 = as trained)", "test accuracy %")]
    for value in [t for t in (low, 0.0, 1.0, high) if low <= t <= high]:
        parts.append(f'<text x="{_x(value, low, high):.1f}" y="{HEIGHT - BOTTOM + 11}" text-anchor="middle" '
                     f'fill="currentColor">{value:g}</text>')
    for name, colour, points in series:
        path = " ".join(f"{_x(t, low, high):.1f},{_y(a):.1f}" for t, a in points)
        width = 2.2 if name == "overall" else 1.6
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="{width}"/>')
    marker = _x(max(low, min(high, tau)), low, high)
    parts.append(f'<line class="lt-tau-marker" x1="{marker:.1f}" x2="{marker:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" '
                 'stroke="#d62728" stroke-width="1.4" stroke-dasharray="3 2"/>')
    chart = _svg("".join(parts), f"test accuracy against τ, marker at τ = {tau:g}")
    return chart + legend([(name, colour) for name, colour, _ in series] + [("this τ", "#d62728")])


def accuracy_vs_count_svg(card: ModelCard) -> str:
    """Each class's test accuracy against its training count, on a log axis, dots in the group colour."""
    accuracy = card.long_tail["class_accuracy"]
    counts = [max(1, c) for c in card.class_counts]
    low, high = math.log10(min(counts)) - 0.1, math.log10(max(counts)) + 0.1
    parts = [_axes("training images per class (log scale)", "test accuracy %")]
    for power in range(math.ceil(low), math.floor(high) + 1):
        x = _x(power, low, high)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" stroke="#ddd" stroke-width="0.4"/>'
                     f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 11}" text-anchor="middle" fill="currentColor">'
                     f"{10 ** power:,}</text>")
    for name, count, value, group in zip(card.class_names, counts, accuracy, card.class_groups):
        if value is None:
            continue
        x, y = _x(math.log10(count), low, high), _y(value)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{GROUP_COLOURS[group]}">'
                     f"<title>{html.escape(name)}: {count:,} training images, {value:.1f}% test accuracy</title></circle>"
                     f'<text x="{x + 5 if x < WIDTH * 0.7 else x - 5:.1f}" y="{y - 5:.1f}" fill="currentColor" '
                     f'font-size="8" text-anchor="{"start" if x < WIDTH * 0.7 else "end"}">{html.escape(name)}</text>')
    return _svg("".join(parts), "test accuracy per class against its training count")


def confusion_svg(card: ModelCard) -> str:
    """Rows = true class, columns = predicted, each row as shares of its test images; classes most frequent first,
    so the cells left of the diagonal in the bottom rows are tail images taken for head classes."""
    matrix = card.long_tail["confusion"]
    order = sorted(range(card.num_classes), key=lambda i: (-card.class_counts[i], i))
    n, label_width, cell = card.num_classes, 70, min(24, 280 / max(1, card.num_classes))
    size = label_width + n * cell + 4
    parts = []
    for row, true in enumerate(order):
        total = sum(matrix[true]) or 1
        y = 4 + row * cell
        parts.append(f'<text x="{label_width - 4}" y="{y + cell * 0.65:.1f}" text-anchor="end" fill="currentColor" '
                     f'font-size="{min(10, cell * 0.5):.1f}">{html.escape(card.class_names[true])}</text>')
        for column, predicted in enumerate(order):
            share = matrix[true][predicted] / total
            colour = "#009E73" if true == predicted else "#D55E00"
            parts.append(f'<rect x="{label_width + column * cell:.1f}" y="{y:.1f}" width="{cell - 1:.1f}" '
                         f'height="{cell - 1:.1f}" fill="{colour}" fill-opacity="{0.06 + 0.94 * share:.3f}">'
                         f"<title>true {html.escape(card.class_names[true])}, predicted "
                         f"{html.escape(card.class_names[predicted])}: {share:.0%}</title></rect>")
    for column, predicted in enumerate(order):
        x = label_width + column * cell + cell / 2
        parts.append(f'<text transform="translate({x:.1f} {4 + n * cell + 4}) rotate(60)" fill="currentColor" '
                     f'font-size="{min(10, cell * 0.5):.1f}">{html.escape(card.class_names[predicted])}</text>')
    return _svg("".join(parts), "confusion matrix, rows true class, columns predicted class",
                height=int(4 + n * cell + 62), width=int(size))


def reliability_svg(calibration: dict) -> str:
    """Accuracy against confidence (both in percent) per group, bins without images skipped; on the diagonal a
    model is calibrated, below it over-confident."""
    parts = [_axes("confidence %", "accuracy %"),
             f'<line x1="{_x(0, 0, 100):.1f}" y1="{_y(0):.1f}" x2="{_x(100, 0, 100):.1f}" y2="{_y(100):.1f}" '
             'stroke="#999" stroke-dasharray="3 2"/>']
    for value in (0, 50, 100):
        parts.append(f'<text x="{_x(value, 0, 100):.1f}" y="{HEIGHT - BOTTOM + 11}" text-anchor="middle" '
                     f'fill="currentColor">{value}</text>')
    entries = []
    for group in GROUPS:
        data = calibration.get(group_name(group))
        if not data:
            continue
        points = [(b["confidence"], b["accuracy"]) for b in data["bins"] if b.get("count")]
        path = " ".join(f"{_x(c, 0, 100):.1f},{_y(a):.1f}" for c, a in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{GROUP_COLOURS[group]}" stroke-width="1.8"/>')
        ece = "no test images" if data.get("ece") is None else f"ECE {data['ece']:.1f}"
        entries.append((f"{group_name(group)} ({ece})", GROUP_COLOURS[group]))
    return _svg("".join(parts), "reliability diagram per group") + legend(entries)



# --- What the charts say, in words ------------------------------------------------------------------


def _accuracy_line(point: dict) -> str:
    groups = " · ".join(f"{name} {'–' if point['groups'].get(name) is None else format(point['groups'][name], '.1f')}%"
                        for name in (group_name(g) for g in GROUPS))
    return f"<b>{point['overall']:.1f}%</b> overall · {groups}"


def tau_effect_html(card: ModelCard | None, tau: float) -> str:
    """What this τ does on the test set (from the card's stored curve), next to τ = 0, with the curve; or why
    there is no curve."""
    if card is None:
        return ""
    if card.group_rule.get("rule") == "unknown":
        return ("<p class='lt-tau-effect' style='margin:0.3em 0'>This model carries no training counts, so τ cannot "
                "be applied to it: leave τ at 0.</p>")
    if not card.tau_curve:
        return ("<p class='lt-tau-effect' style='margin:0.3em 0'>This model's file has no τ curve (it was exported "
                "before the curve was stored), so what τ does on the test set cannot be shown; the predictions still "
                "follow τ. Re-exporting it with <code>python -m training export</code> adds the curve.</p>")
    point, base = card.tau_point(tau), card.tau_point(0.0)
    low, high = card.tau_curve[0]["tau"], card.tau_curve[-1]["tau"]
    clamped = "" if low <= tau <= high else f" (the curve stops at τ = {point['tau']:g})"
    lines = [f"<div>On the test set at <b>τ = {tau:g}</b>{clamped}: {_accuracy_line(point)}</div>"]
    if tau != 0:
        lines.append(f"<div style='opacity:0.8'>As trained (τ = 0): {_accuracy_line(base)}</div>")
    return (f"<div class='lt-tau-effect' style='margin:0.3em 0'>{''.join(lines)}</div>"
            + tau_curve_svg(card.tau_curve, tau))


def long_tail_html(card: ModelCard) -> str:
    """The card's long-tail pictures, each with one line saying how to read it; one line when there are none."""
    if not card.long_tail:
        return ("<p>This model's file has no long-tail pictures (accuracy per class, confusion matrix, calibration): "
                "it was exported before they were stored. Re-exporting it with <code>python -m training "
                "export</code> adds them.</p>")
    sections = [
        ("Accuracy per class against its training count",
         "Each dot is a class; the fewer training images, the lower it usually sits.", accuracy_vs_count_svg(card)),
        ("Confusion matrix", "Rows: the true class; columns: what the model said; classes most frequent first. "
         "Orange cells left of the diagonal are tail images taken for head classes.", confusion_svg(card)),
        ("Calibration per group", "How often the model is right against how sure it is; below the dashed diagonal "
         "it is over-confident. ECE: the average gap, in percentage points.",
         reliability_svg(card.long_tail.get("calibration") or {})),
    ]
    return "".join(f"<div class='lt-figure' style='margin:0 0 1.2em;max-width:100%;overflow:hidden'><h4 style='margin:0.2em 0'>"
                   f"{title}</h4><p style='opacity:0.8;margin:0.1em 0 0.3em'>{note}</p>{chart}</div>"
                   for title, note, chart in sections)

"""Small Pillow drawing helpers for charts (comparison report, area-over-time plots): fonts, line-chart panels with
ticks, legends, titled tiles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["PALETTE", "Series", "draw_legend", "draw_panel", "faint", "font", "nice_ticks", "text_size"]

Colour = tuple[int, int, int]
#: distinguishable line colours, one per model (cycled).
PALETTE: tuple[Colour, ...] = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
)
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def font(size: int) -> Font:
    """Pillow's default font at ``size`` pixels (the fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, typeface: Font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=typeface)
    return int(right - left), int(bottom - top)


def faint(colour: Colour, strength: float = 0.35) -> Colour:
    """``colour`` blended towards white (``strength`` 1 keeps it)."""
    return tuple(int(round(255 - strength * (255 - c))) for c in colour)  # type: ignore[return-value]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps 1, 2 or 5 x 10^k) covering ``[low, high]``."""
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step + 1e-9) * step
    ticks, value = [], start
    while value <= high + step * 1e-6:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _tick_text(value: float, step: float) -> str:
    digits = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{digits}f}"


@dataclass
class Series:
    """A polyline ``points`` (x, y) in data units; ``width`` in pixels."""

    points: list[tuple[float, float]]
    colour: Colour
    width: int = 3


def draw_panel(
    image: Image.Image,
    box: tuple[int, int, int, int],
    series: Sequence[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    integer_x: bool = True,
    x_span: tuple[float, float] | None = None,
) -> None:
    """Draw a line chart with title, grid, ticks and axis labels into ``box`` (left, top, right, bottom); the x axis
    covers at least ``x_span`` (so panels side by side can share it)."""
    draw = ImageDraw.Draw(image)
    small, bold = font(13), font(15)
    left, top, right, bottom = box
    draw.text((left + 60, top + 4), title, fill="black", font=bold)
    plot = (left + 70, top + 32, right - 12, bottom - 48)
    points = [p for s in series for p in s.points if math.isfinite(p[1])]
    draw.rectangle(plot, outline="black")
    if not points:
        draw.text((plot[0] + 10, plot[1] + 10), "no data", fill="grey", font=small)
        return
    xs, ys = [p[0] for p in points] + list(x_span or ()), [p[1] for p in points]
    xticks = nice_ticks(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, 6)
    if integer_x:
        xticks = sorted({int(round(t)) for t in xticks if abs(t - round(t)) < 1e-9}) or [int(min(xs))]
    yticks = nice_ticks(min(ys), max(ys), 5)
    x0, x1 = min(xticks[0], min(xs)), max(xticks[-1], max(xs))
    y0, y1 = yticks[0], yticks[-1]
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (
            plot[0] + (x - x0) / (x1 - x0) * (plot[2] - plot[0]),
            plot[3] - (y - y0) / (y1 - y0) * (plot[3] - plot[1]),
        )

    ystep = yticks[1] - yticks[0] if len(yticks) > 1 else 1.0
    for value in yticks:
        _, y = to_pixel(x0, value)
        draw.line([(plot[0], y), (plot[2], y)], fill=(225, 225, 225))
        draw.line([(plot[0] - 5, y), (plot[0], y)], fill="black")
        label = _tick_text(value, ystep)
        w, h = text_size(draw, label, small)
        draw.text((plot[0] - 8 - w, y - h / 2 - 2), label, fill="black", font=small)
    for value in xticks:
        x, _ = to_pixel(value, y0)
        draw.line([(x, plot[3]), (x, plot[3] + 5)], fill="black")
        label = str(value) if integer_x else _tick_text(value, xticks[1] - xticks[0] if len(xticks) > 1 else 1.0)
        w, _ = text_size(draw, label, small)
        draw.text((x - w / 2, plot[3] + 8), label, fill="black", font=small)
    draw.rectangle(plot, outline="black")
    for line in series:
        pixels = [to_pixel(x, y) for x, y in line.points if math.isfinite(y)]
        if len(pixels) > 1:
            draw.line(pixels, fill=line.colour, width=line.width, joint="curve")
        elif pixels:
            (x, y), r = pixels[0], max(2, line.width)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=line.colour)
    w, _ = text_size(draw, xlabel, small)
    draw.text(((plot[0] + plot[2]) / 2 - w / 2, bottom - 22), xlabel, fill="black", font=small)
    w, h = text_size(draw, ylabel, small)
    label = Image.new("RGB", (w + 4, h + 6), "white")
    ImageDraw.Draw(label).text((2, 0), ylabel, fill="black", font=small)
    rotated = label.rotate(90, expand=True)
    image.paste(rotated, (left + 4, int((plot[1] + plot[3]) / 2 - rotated.height / 2)))


def draw_legend(image: Image.Image, origin: tuple[int, int], items: Sequence[tuple[str, Colour]], width: int) -> None:
    """Colour swatches with names, in rows that fit ``width`` pixels from ``origin``."""
    draw = ImageDraw.Draw(image)
    small = font(14)
    x, y = origin
    for name, colour in items:
        w, h = text_size(draw, name, small)
        if x + 40 + w > origin[0] + width and x > origin[0]:
            x, y = origin[0], y + 24
        draw.line([(x, y + 9), (x + 28, y + 9)], fill=colour, width=4)
        draw.text((x + 34, y), name, fill="black", font=small)
        x += 34 + w + 30

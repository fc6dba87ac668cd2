"""Drawing for reports and predictions: lead-time curves (matplotlib's Agg canvas, without
pyplot, so the user's backend is untouched) and frame images and
animations (Pillow). Every function returns the encoded file as ``bytes`` so that callers can
write it atomically; the output is deterministic (no timestamps in the files).

Frames are ``(T, C, H, W)`` arrays with ``C`` 1 (grayscale) or 3 (RGB); other channel counts
show their first channel. Values are mapped to gray levels linearly from ``[vmin, vmax]``
(default ``[0, 1]``) and clipped.

>>> import io, numpy as np
>>> from PIL import Image
>>> frames = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
>>> gif = Image.open(io.BytesIO(sequence_gif(frames[:2], frames[2:], frames[2:])))
>>> gif.n_frames
4
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

__all__ = ["frame_png", "lead_time_figure", "rain_maps_figure", "sequence_gif", "to_uint8"]

_PANEL_MIN = 128  # panels are enlarged (nearest neighbour, integer factor) to at least this size
_HEADER = 18  # pixels of label strip above the panels
_GAP = 4  # pixels between panels
_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)
_BLANK = 48  # gray level of an empty panel


def to_uint8(frames: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Map ``frames`` linearly from ``[vmin, vmax]`` to ``0..255`` (clipped, rounded).

    >>> to_uint8(np.array([-1.0, 0.0, 0.5, 1.0, 2.0])).tolist()
    [0, 0, 128, 255, 255]
    """
    if vmax <= vmin:
        raise ValueError(f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}")
    scaled = (np.asarray(frames, dtype=np.float64) - vmin) / (vmax - vmin)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _image(frame: np.ndarray) -> Image.Image:
    """A ``(C, H, W)`` uint8 frame as a Pillow RGB image."""
    if frame.shape[0] == 3:
        return Image.fromarray(np.ascontiguousarray(frame.transpose(1, 2, 0)), "RGB")
    return Image.fromarray(np.ascontiguousarray(frame[0]), "L").convert("RGB")


def frame_png(frame: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> bytes:
    """One ``(C, H, W)`` frame as PNG bytes, grayscale for ``C == 1`` and RGB for ``C == 3``.

    >>> from PIL import Image
    >>> Image.open(io.BytesIO(frame_png(np.zeros((1, 5, 7))))).size
    (7, 5)
    """
    pixels = to_uint8(frame, vmin, vmax)
    if pixels.ndim != 3:
        raise ValueError(f"frame must be (C, H, W), got shape {tuple(pixels.shape)}")
    image = _image(pixels) if pixels.shape[0] == 3 else Image.fromarray(pixels[0], "L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _error_image(error: np.ndarray, scale: float) -> Image.Image:
    """Absolute error ``(C, H, W)`` (channels averaged) in black→red→yellow, 0..``scale``."""
    level = np.clip(np.abs(error).mean(axis=0) / scale, 0.0, 1.0)
    rgb = np.stack([np.clip(2 * level, 0, 1), np.clip(2 * level - 1, 0, 1), np.zeros_like(level)])
    return _image(np.rint(rgb * 255).astype(np.uint8))


def sequence_gif(
    inputs: np.ndarray,
    truth: np.ndarray | None,
    forecast: np.ndarray,
    *,
    vmin: float = 0.0,
    vmax: float = 1.0,
    duration_ms: int = 200,
) -> bytes:
    """An animated GIF with columns input | truth | forecast | error, as bytes.

    ``inputs`` is ``(T_in, C, H, W)``; ``forecast`` and ``truth`` (``None`` when unknown: the
    columns are then input | forecast) are ``(T_out, C, H, W)``. The animation has
    ``T_in + T_out`` frames: first the inputs play (the other columns empty), then the input
    column holds the last input while truth, forecast and ``|forecast - truth|`` play. Each
    frame is labelled with its time (``t-k`` for inputs, ``+k`` lead time for forecasts).
    """
    inputs, forecast = np.asarray(inputs, np.float64), np.asarray(forecast, np.float64)
    columns = [forecast] if truth is None else [np.asarray(truth, np.float64), forecast]
    if inputs.ndim != 4 or any(c.shape != forecast.shape for c in columns) or forecast.ndim != 4:
        raise ValueError(
            "expected inputs (T_in, C, H, W) and truth, forecast of one shape (T_out, C, H, W); "
            f"got {[inputs.shape, *(c.shape for c in columns)]}"
        )
    if inputs.shape[1:] != forecast.shape[1:]:
        raise ValueError(
            f"input frames {inputs.shape[1:]} differ from forecast {forecast.shape[1:]}"
        )
    height, width = inputs.shape[2:]
    zoom = max(1, -(-_PANEL_MIN // min(height, width)))
    panel = (width * zoom, height * zoom)
    blank = Image.new("RGB", panel, (_BLANK,) * 3)
    font = ImageFont.load_default()

    def show(frame: np.ndarray) -> Image.Image:
        return _image(to_uint8(frame, vmin, vmax)).resize(panel, Image.Resampling.NEAREST)

    def error(lead: int) -> Image.Image:
        image = _error_image(columns[1][lead] - columns[0][lead], vmax - vmin)
        return image.resize(panel, Image.Resampling.NEAREST)

    names = ["input", "forecast"] if truth is None else ["input", "truth", "forecast", "|error|"]
    size = (len(names) * (panel[0] + _GAP) + _GAP, panel[1] + _HEADER + _GAP)
    frames = []
    t_in = len(inputs)
    for step in range(t_in + len(forecast)):
        label = (f"t{min(step, t_in - 1) - t_in + 1}", f"+{step - t_in + 1}")
        lead = step - t_in
        if lead < 0:
            panels = [show(inputs[step])] + [blank] * (len(names) - 1)
        else:
            panels = [show(inputs[-1])] + [show(c[lead]) for c in columns]
            panels += [] if truth is None else [error(lead)]
        canvas = Image.new("RGB", size, _BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        for column, (name, image) in enumerate(zip(names, panels, strict=True)):
            x = _GAP + column * (panel[0] + _GAP)
            canvas.paste(image, (x, _HEADER))
            text = name if column and lead < 0 else f"{name} {label[column > 0]}"
            draw.text((x + 2, 3), text, fill=_TEXT, font=font)
        frames.append(canvas)
    buffer = io.BytesIO()
    frames[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=duration_ms,
        loop=0,
        optimize=False,
        disposal=1,
    )
    return buffer.getvalue()


def lead_time_figure(
    curves: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    ylabel: str,
    best: str = "lower",
) -> bytes:
    """A PNG line plot of a metric against lead time, one line per forecaster.

    ``curves`` maps a forecaster's name to its values at lead times 1, 2, ...; ``None`` values
    (metric undefined at that lead time) are left as gaps. ``best`` (``"lower"``, ``"higher"``
    or ``"one"``) says in the title which values are best.

    >>> from PIL import Image
    >>> png = lead_time_figure({"model": [1.0, 2.0], "zeros": [3.0, 3.5]}, title="MSE", ylabel="x")
    >>> Image.open(io.BytesIO(png)).format
    'PNG'
    """
    figure = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (name, values) in enumerate(curves.items()):
        y = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        lead = np.arange(1, len(y) + 1)
        axes.plot(lead, y, marker="o", markersize=3, label=name, color=f"C{index}")
    axes.set_xlabel("lead time (frames)")
    axes.set_ylabel(ylabel)
    hint = {"lower": "lower is better", "higher": "higher is better", "one": "1 is best"}[best]
    axes.set_title(f"{title} ({hint})")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, alpha=0.3)
    if curves:
        axes.legend()
    figure.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.91)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


# pysteps' rain-rate colour levels (mm/h), used when pysteps is not installed
_RAIN_LEVELS = (0.08, 0.16, 0.25, 0.4, 0.63, 1, 1.6, 2.5, 4, 6.3, 10, 16, 25, 40, 63, 100, 160)


def _rain_colours() -> tuple[Any, Any]:
    """``(cmap, norm)``: pysteps' rain-rate colour scale in mm/h
    (``pysteps.visualization.precipfields.get_colormap("intensity", "mm/h", "pysteps")``), or
    its levels on matplotlib's ``viridis`` without pysteps."""
    from matplotlib.colors import BoundaryNorm

    try:
        from convlstm._pysteps import import_pysteps

        import_pysteps()
        from pysteps.visualization.precipfields import get_colormap

        with warnings.catch_warnings():  # pysteps sets the extremes in a way matplotlib retires
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            cmap, norm, _, _ = get_colormap("intensity", "mm/h", "pysteps")
        return cmap, norm
    except ImportError:
        from matplotlib import colormaps

        cmap = colormaps["viridis"].resampled(len(_RAIN_LEVELS) - 1)
        cmap = cmap.with_extremes(under="none", bad="gray")
        return cmap, BoundaryNorm(_RAIN_LEVELS, cmap.N)


def rain_maps_figure(
    rows: Mapping[str, np.ndarray], lead_times: Sequence[int], *, title: str = ""
) -> bytes:
    """A PNG grid of rain-rate maps in mm/h on pysteps' colour scale: one row per field
    (e.g. observation, model, optical flow), one column per lead time, one colour bar.

    Args:
        rows: name -> ``(T, H, W)`` or ``(T, C, H, W)`` rain rates in mm/h (first channel
            shown); rain below 0.08 mm/h is left blank and NaN (no data) is grey, as in
            pysteps.
        lead_times: 1-based lead times to show (columns).
        title: the figure's title.

    >>> from PIL import Image
    >>> rain = np.random.default_rng(0).gamma(0.5, 3.0, (3, 16, 16))
    >>> png = rain_maps_figure({"observation": rain, "model": rain}, [1, 3])
    >>> Image.open(io.BytesIO(png)).format
    'PNG'
    """
    if not rows or not lead_times:
        raise ValueError("rain_maps_figure needs at least one row and one lead time")
    cmap, norm = _rain_colours()
    figure = Figure(figsize=(1.9 * len(lead_times) + 1.2, 1.9 * len(rows) + 0.5), dpi=100)
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(rows), len(lead_times), squeeze=False)
    image = None
    for r, (name, field) in enumerate(rows.items()):
        frames = np.asarray(field, dtype=np.float64)
        frames = frames[:, 0] if frames.ndim == 4 else frames
        for c, lead in enumerate(lead_times):
            axes = grid[r, c]
            frame = np.ma.masked_invalid(frames[lead - 1])  # NaN: no data (grey in pysteps)
            image = axes.imshow(frame, cmap=cmap, norm=norm, interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if r == 0:
                axes.set_title(f"lead time {lead}", fontsize=9)
            if c == 0:
                axes.set_ylabel(name, fontsize=9)
    assert image is not None  # at least one row and one lead time (checked above)
    bar = figure.colorbar(image, ax=grid, shrink=0.9, ticks=list(_RAIN_LEVELS[::2]))
    bar.set_label("rain rate (mm/h)")
    if title:
        figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()

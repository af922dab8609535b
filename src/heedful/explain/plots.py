"""Pictures: attention maps (a heatmap with its tokens on both axes, over a spectrogram, over an
image) and the figures runs write (training history, confusion matrix, groups, image grids)."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from heedful.errors import UserError, warn
from heedful.outputs import written_whole

# DejaVu Sans covers Latin, Greek, Cyrillic and Arabic letters (unshaped: matplotlib draws them
# isolated, left to right); a CJK font draws the characters it lacks, matplotlib falling back along
# this list. Debian: fonts-noto-cjk or fonts-droid-fallback (.ci/run installs the latter).
FONT_CANDIDATES = (
    "DejaVu Sans",
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Droid Sans Fallback",
    "WenQuanYi Zen Hei",
)
_warned_missing = False


@functools.cache
def _label_fonts() -> tuple[tuple[str, frozenset[int]], ...]:
    """The installed candidates, in fallback order, each with the code points it draws. Fonts
    installed after matplotlib built its font cache are found through the system's font list."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    paths = {f.name: f.fname for f in font_manager.fontManager.ttflist if f.name in FONT_CANDIDATES}
    if len(paths) < len(FONT_CANDIDATES):
        for path in font_manager.findSystemFonts():
            try:
                name = FT2Font(path).family_name
            except (OSError, RuntimeError):
                continue
            if name in FONT_CANDIDATES and name not in paths:
                font_manager.fontManager.addfont(path)
                paths[name] = path
    return tuple((name, frozenset(FT2Font(paths[name]).get_charmap())) for name in FONT_CANDIDATES if name in paths)


def label_families() -> list[str]:
    """Font families for labels, in fallback order (those installed)."""
    return [name for name, _ in _label_fonts()] or ["DejaVu Sans"]


def label_text(text: str) -> str:
    """``text`` as a label can show it: a character that no installed font draws is written as
    its code point (``U+5E74``) instead of an empty box, with one warning per process that
    says which font to install."""
    global _warned_missing
    fonts = _label_fonts()
    missing = [c for c in text if not c.isspace() and not any(ord(c) in points for _, points in fonts)]
    if not missing:
        return text
    if not _warned_missing:
        _warned_missing = True
        shown = "".join(dict.fromkeys(missing))[:8]
        # heedful's own warning line, as every other user-facing warning (not a Python UserWarning
        # with heedful's file and line in it); once per machine under torchrun.
        warn(
            f"no installed font draws {shown!r}: plot labels show such characters as U+XXXX; install a font "
            "that covers them (Debian: apt-get install fonts-noto-cjk)"
        )
    return "".join(f"U+{ord(c):04X}" if c in missing else c for c in text)


def attention_heatmap(
    weights: Tensor,
    query_tokens: list[str],
    key_tokens: list[str],
    path: str | Path,
    title: str = "",
    labels: tuple[str, str] = ("source (keys)", "output (queries)"),
) -> Path:
    """Save a (T_q, T_k) attention map as a PNG: rows are queries, columns are keys; ``labels``
    names the x and y axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _draw(plt, weights, query_tokens, key_tokens, path, title, labels)


def _draw(
    plt,
    weights: Tensor,
    query_tokens: list[str],
    key_tokens: list[str],
    path: Path,
    title: str,
    labels: tuple[str, str],
) -> Path:
    fonts = label_families()
    data = weights.float().cpu().numpy()
    t_q, t_k = data.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.32 * t_k + 1.8), max(3.0, 0.32 * t_q + 1.4)))
    image = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=max(float(data.max()), 1e-6), aspect="auto")
    ax.set_xticks(range(t_k), [label_text(_visible(t)) for t in key_tokens], fontfamily=fonts)
    ax.set_yticks(range(t_q), [label_text(_visible(t)) for t in query_tokens], fontfamily=fonts)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    if title:
        ax.set_title(label_text(title), fontfamily=fonts, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _visible(token: str) -> str:
    return {" ": "␣", "\u202f": "␣", "\u00a0": "␣"}.get(token, token)


def spectrogram_attention(
    features: Tensor, attention: Tensor, path: str | Path, *, hop_seconds: float, frame_seconds: float, title: str = ""
) -> Path:
    """Log-mel spectrogram (top) over the self-attention of its frames (bottom), on one time axis.

    features: (T, n_mels), one row per ``hop_seconds``; attention: (T', T') between encoder frames,
    one per ``frame_seconds`` (the CNN downsamples time). Row i of the lower panel is where the
    frame at time i looks.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = features.float().cpu().numpy().T  # (n_mels, T)
    weights = attention.float().cpu().numpy()  # (T', T')
    span = attention.shape[0] * frame_seconds
    # The CNN rounds time up at each halving, so its last frame reaches past the audio: the spectrogram
    # is padded with its quietest value to the frames' end (as the CNN pads), not left a white strip.
    columns = max(spec.shape[1], math.ceil(span / hop_seconds - 1e-6))
    spec = np.pad(spec, ((0, 0), (0, columns - spec.shape[1])), constant_values=spec.min())
    end = max(columns * hop_seconds, span)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True, gridspec_kw={"height_ratios": [1, 2.2]})
    top.imshow(spec, origin="lower", aspect="auto", cmap="magma", extent=(0, columns * hop_seconds, 0, spec.shape[0]))
    top.set_ylabel("mel bin")
    if title:
        top.set_title(title, fontsize=9)
    image = bottom.imshow(weights, origin="upper", aspect="auto", cmap="viridis", extent=(0, span, span, 0))
    bottom.set_xlabel("key frame time (s)")
    bottom.set_ylabel("query frame time (s)")
    bottom.set_xlim(0, end)
    fig.colorbar(image, ax=[top, bottom], fraction=0.035)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def attention_overlay(
    image: Tensor, weights: Tensor, side: int, queries: list[tuple[int, int]], path: Path, title: str = ""
) -> Path:
    """A generated image, then one panel per query position: its attention over the feature map
    (side × side, upsampled to the image) laid over the image, the query marked with a cross.

    image: (C, R, R) in [−1, 1]; weights: (Q, side·side), row q = query q's attention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picture = ((image.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).squeeze(-1).numpy()
    size = image.shape[-1]
    cell = size / side
    fig, axes = plt.subplots(1, len(queries) + 1, figsize=(2.4 * (len(queries) + 1), 2.7))
    axes[0].imshow(picture, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("generated", fontsize=9)
    for ax, (r, c), row in zip(axes[1:], queries, weights, strict=True):
        heat = row.float().view(1, 1, side, side)
        heat = torch.nn.functional.interpolate(heat, size=(size, size), mode="nearest")[0, 0].numpy()
        ax.imshow(picture, cmap="gray", vmin=0, vmax=1)
        ax.imshow(heat, cmap="inferno", alpha=0.6)
        ax.plot([(c + 0.5) * cell - 0.5], [(r + 0.5) * cell - 0.5], marker="x", color="cyan", markersize=9, mew=2)
        ax.set_title(f"query ({r}, {c})", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    """A C × C confusion matrix (rows: true class, columns: predicted), each cell's count written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(classes), 1.0 + 0.6 * len(classes)))
    ax.imshow(confusion, cmap="Blues")
    for i, row in enumerate(confusion):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_groups(groups: dict[str, Any], path: Path) -> Path:
    """Per group, the predicted mean class against the true one (metrics/classification.group_quality)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.scatter(groups["true"], groups["predicted"], s=14)
    lo = min(groups["true"] + groups["predicted"])
    hi = max(groups["true"] + groups["predicted"])
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    ax.set_xlabel("true mean class")
    ax.set_ylabel("predicted mean class")
    ax.set_title(f"{len(groups['names'])} groups with ≥ {groups['min_size']} examples: ρ = {groups['spearman']:.2f}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}  # what a grid is saved as, by its suffix


def image_format(path: Path, option: str) -> str:
    """The PIL format ``path``'s suffix names, or a one-line ``UserError``."""
    if Path(path).suffix.lower() not in IMAGE_FORMATS:
        raise UserError(f"{option} {path}: give a file name ending in .png or .jpg")
    return IMAGE_FORMATS[Path(path).suffix.lower()]


def save_grid(images: Tensor, path: Path, columns: int | None = None, scale: int = 4, option: str = "out") -> Path:
    """Tile (N, C, R, R) images in [−1, 1] into one PNG or JPEG (by ``path``'s suffix; nearest-
    neighbour upscaled ``scale``×), written whole: a failure leaves an earlier file as it was, and
    an OS error is one line naming ``option``."""
    from PIL import Image

    fmt = image_format(path, "out")
    n, c, r, _ = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = torch.full((c, rows * (r + 1) + 1, columns * (r + 1) + 1), -1.0)
    for i, image in enumerate(images):
        top, left = 1 + (i // columns) * (r + 1), 1 + (i % columns) * (r + 1)
        grid[:, top : top + r, left : left + r] = image
    array = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = array.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    picture = Image.fromarray(array[0].numpy(), "L") if c == 1 else Image.fromarray(array.permute(1, 2, 0).numpy())
    with written_whole(path, option, binary=True) as handle:
        picture.save(handle, format=fmt)
    return path


def plot_history(curves: dict[str, list[float]], path: Path, monitor: str | None = None) -> None:
    """Per epoch, train beside val: the loss, the accuracy where the task has one, and the
    metric the run is judged by (``monitor``, e.g. val_bleu or val_fid) where it is neither
    (``curves``: a run's history, metric -> one value per epoch, with ``epoch``); nothing is drawn
    before the first epoch."""
    if not curves.get("epoch"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = curves
    panels = [m for m in ("loss", "accuracy") if m == "loss" or any(f"{s}_{m}" in h for s in ("train", "val"))]
    if monitor and monitor in h and monitor.removeprefix("val_") not in panels:
        panels.append(monitor.removeprefix("val_"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=True):
        for split in ("train", "val"):
            key = f"{split}_{metric}"
            if key in h:
                ax.plot(h["epoch"], h[key], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        if ax.get_legend_handles_labels()[0]:  # a GAN has no validation loss: an empty panel
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

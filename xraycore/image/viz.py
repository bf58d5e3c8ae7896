"""Pictures of the tutorial: comparison sheet, intensity histogram, stack GIF.

Needs the ``viz`` extra (matplotlib, imageio); imported lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["comparison_figure", "histogram_plot", "pyplot", "stack_gif"]

# Panel title and colour map of each output, as the tutorial's final figure.
_PANELS = {
    "original": ("Original", "gray"),
    "preprocessed": ("Preprocessed", "gray"),
    "log": ("Laplacian-Gaussian", "gray"),
    "gradient_magnitude": ("Gaussian gradient", "gray"),
    "sobel": ("Sobel", "CMRmap"),
    "canny": ("Canny", "gray"),
    "mask": ("Mask (> 150)", "gray"),
}


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), or an
    ImportError saying which extra installs it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "xraycore.image.viz needs matplotlib: pip install 'xray-pipeline[viz]'"
        ) from exc
    return plt


def comparison_figure(
    rows: list[dict[str, np.ndarray]], path: str | Path, *, titles: list[str] | None = None
) -> Path:
    """Write the tutorial's comparison picture: one row per scan, one panel per output.

    Parameters
    ----------
    rows : list of dict
        Each maps output names (``original``, ``preprocessed``, ``log``, ...)
        to 2-D arrays; unknown names and 1-D arrays (histograms) are skipped.
    path : str or Path
        PNG to write.
    titles : list of str, optional
        A label per row (an image id).

    Returns
    -------
    path : Path
    """
    if not rows:
        raise ValueError("rows must hold at least one scan")
    plt = pyplot()
    names = [n for n in _PANELS if any(n in r and np.ndim(r[n]) == 2 for r in rows)]
    fig, axes = plt.subplots(
        len(rows), len(names), figsize=(2.6 * len(names), 2.8 * len(rows)), squeeze=False
    )
    for i, row in enumerate(rows):
        for j, name in enumerate(names):
            ax = axes[i][j]
            ax.axis("off")
            if name in row:
                title, cmap = _PANELS[name]
                panel = np.asarray(row[name], dtype=np.float32)
                # Edge responses have rare extremes: show the 1st-99th percentile range.
                lo, hi = np.percentile(panel, [1, 99]) if panel.size else (0.0, 1.0)
                ax.imshow(panel, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1)
                label = f"{titles[i]}\n{title}" if titles and j == 0 else title
                ax.set_title(label, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def histogram_plot(counts: np.ndarray, path: str | Path) -> Path:
    """Plot a pixel-intensity histogram (the tutorial's ``plt.plot(hist)``) to PNG."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array, got shape {counts.shape}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(counts)
    ax.set_title("Pixel intensity distribution")
    ax.set_xlabel("intensity bin")
    ax.set_ylabel("pixels")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def stack_gif(stack: np.ndarray, path: str | Path, *, duration: float = 1000) -> Path:
    """Write an (N, H, W) uint8 stack as an animated GIF (the tutorial's progression)."""
    stack = np.asarray(stack)
    if stack.ndim != 3 or stack.dtype != np.uint8:
        raise ValueError(f"stack must be (N, H, W) uint8, got {stack.shape} {stack.dtype}")
    try:
        import imageio.v3 as iio
    except ImportError as exc:  # pragma: no cover
        raise ImportError("stack_gif needs imageio: pip install 'xray-pipeline[viz]'") from exc
    path = Path(path)
    iio.imwrite(path, list(stack), extension=".gif", duration=duration, loop=0)
    return path

"""Loss curves as PNG bytes (matplotlib, no display needed).

python -c "from smoltune.report.plots import loss_curve_png; print(len(loss_curve_png({'run': [2, 1.5, 1]})))"
"""

from __future__ import annotations

import io


def loss_curve_png(curves: dict[str, list[float]], title: str = "Training loss") -> bytes:
    """One line per named loss curve (step 1..n on the x axis)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.6), dpi=110)
    for label, losses in curves.items():
        axes.plot(range(1, len(losses) + 1), losses, label=label, linewidth=1.6)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if len(curves) > 1:
        axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()

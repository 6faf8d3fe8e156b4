"""The side-by-side bar chart of an Evaluation with variants (comparison.png in its report).

Only metrics on a 0–1 scale are drawn (accuracy-like scores and ROUGE), so bars share one axis;
latency and losses stay in the tables. matplotlib is imported here, on the machine writing the
report, with a display-less backend.
"""

from __future__ import annotations

from pathlib import Path


def write_comparison_chart(comparison: tuple[list[str], dict[str, dict[str, float | None]]], path: Path,
                           title: str) -> None:
    metrics, values = comparison
    drawn = [m for m in metrics if all(v is not None and 0 <= v <= 1 for v in (row[m] for row in values.values()))]
    if not drawn:
        return
    import matplotlib

    matplotlib.use("Agg")  # no display on CI runners or Ray workers
    import matplotlib.pyplot as plt

    systems = list(values)
    width = 0.8 / len(systems)
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(drawn) + 2), 3.8), dpi=100)
    for offset, system in enumerate(systems):
        positions = [i + (offset - (len(systems) - 1) / 2) * width for i in range(len(drawn))]
        bars = axes.bar(positions, [values[system][m] for m in drawn], width, label=system)
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    axes.set_xticks(range(len(drawn)), drawn)
    axes.set_ylim(0, 1.12)
    axes.set_ylabel("score (higher is better)")
    axes.set_title(f"Evaluation {title}: side by side")
    axes.legend(fontsize=8, ncols=min(len(systems), 4), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)

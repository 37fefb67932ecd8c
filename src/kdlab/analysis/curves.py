"""Training curves and small tables for run folders (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from kdlab.engine.checkpoint import atomic_write_bytes


def read_history(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def plot_curves(histories: dict[str, list[dict]], path: Path, *, title: str = "") -> Path:
    """Test top-1 and training loss per epoch, one line per labelled run, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for label, hist in histories.items():
        if not hist:
            continue
        epochs = [r["epoch"] for r in hist]
        ax_acc.plot(epochs, [r["test_top1"] for r in hist], marker=".", label=label)
        ax_loss.plot(epochs, [r["train_loss"] for r in hist], marker=".", label=label)
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[object]]) -> str:
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in cells])

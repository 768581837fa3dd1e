"""Decode-time attention plots: where the model looked for each token of the hypothesis it chose.

ESPnet plots attention only for teacher-forced training batches; this draws the decoded
hypothesis' own alignment. Needs matplotlib (``pip install attnkit[plot]``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_attention(transcript, path, *, title: str | None = None) -> Path:
    """Writes a PNG of ``transcript``'s attention (an ``attnkit.asr.Transcript``) to ``path``.

    Top: the attention weights of each decoder step (tokens, then ``<eos>``, on the vertical axis)
    over time, the argmax frame of each step drawn over them; one panel per head for multi-head
    attention. Bottom: the filterbank features on the same time axis.
    """
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plot_attention needs matplotlib: pip install 'attnkit[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = np.asarray(transcript.weights, np.float32)
    if weights.ndim == 2:
        weights = weights[:, None, :]
    steps, heads, frames = weights.shape
    labels = [("␣" if t == "<space>" else t) for t in transcript.tokens] + ["<eos>"]
    labels = labels[:steps]
    seconds = transcript.audio_seconds
    fig, axes = plt.subplots(heads + 1, 1, figsize=(max(6.0, 1.2 * seconds + 3), 1.6 + 0.25 * steps * heads + 2.2),
                             sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [max(steps, 1) * 0.25 + 0.8] * heads + [2.0]})
    axes = axes[:, 0]
    for h in range(heads):
        ax = axes[h]
        if steps:
            ax.imshow(weights[:, h, :], aspect="auto", origin="upper", cmap="viridis", interpolation="nearest",
                      extent=(0, seconds, steps - 0.5, -0.5), vmin=0, vmax=max(float(weights[:, h].max()), 1e-6))
            centre = (np.argmax(weights[:, h, :], axis=-1) + 0.5) * seconds / frames
            ax.plot(centre, np.arange(steps), color="red", marker="o", markersize=3, linewidth=1)
        ax.set_yticks(np.arange(steps))
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_ylabel("token" if heads == 1 else f"head {h}")
    axes[0].set_title(title if title is not None else f"“{transcript.text}”")
    feats = np.asarray(transcript.features, np.float32)
    axes[-1].imshow(feats.T, aspect="auto", origin="lower", cmap="magma", interpolation="nearest",
                    extent=(0, seconds, 0, feats.shape[1] if feats.ndim == 2 else 1))
    axes[-1].set_ylabel("mel bin")
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""The logit lens: its last layer is the model's own prediction, and its figure is one a paper can print."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import hooklab  # noqa: E402
from hooklab.lens import LogitLens  # noqa: E402


def small_lens(n_layers: int = 6) -> LogitLens:
    tokens = ["The", " Eiffel", " Tower", " is", " in"]
    top = [[" Paris" if layer >= 4 else "\n" for _ in tokens] for layer in range(n_layers)]
    target_probs = torch.zeros(n_layers, len(tokens))
    target_probs[:, -1] = torch.linspace(0, 0.9, n_layers)
    ranks = torch.full((n_layers, len(tokens)), 3)
    ranks[4:, -1] = 0
    return LogitLens(tokens, top, torch.rand(n_layers, len(tokens)), " Paris", target_probs, ranks)


def test_the_last_layer_is_the_models_prediction(pico_llama):
    model = hooklab.load(pico_llama, device="cpu")
    prompt = "The Eiffel Tower is located in the city of"
    lens = hooklab.logit_lens(model, prompt)
    with torch.no_grad():
        probs = model(model.to_tokens(prompt))[0].float().softmax(-1)  # (T, V)
    torch.testing.assert_close(lens.top_probs[-1], probs.max(-1).values)
    assert lens.target == model.tokenizer.decode([int(probs[-1].argmax())])
    assert lens.first_top_layer() is not None and lens.target_ranks[-1, -1] == 0


def test_the_figure_labels_every_panel_and_attaches_the_colour_bar(tmp_path):
    lens = small_lens()
    fig = lens.plot(tmp_path / "lens.png")
    try:
        heatmap, side = fig.axes[0], fig.axes[1]
        bar = heatmap.images[0].colorbar
        assert bar is not None and bar.ax in fig.axes and len(fig.axes) == 3
        assert bar.ax.get_xlabel() == "p(top token)"
        assert heatmap.get_ylabel() == "layer" and side.get_ylabel() == "layer"
        assert heatmap.get_xlabel() and side.get_xlabel() == "p(␣Paris) after ␣in"
        # layer numbers on both panels, tokens with their leading space visible
        assert [t.get_text() for t in side.get_yticklabels()] == [str(i) for i in range(6)]
        assert all(t.get_visible() for t in side.get_yticklabels())
        assert [t.get_text() for t in heatmap.get_xticklabels()] == ["The", "␣Eiffel", "␣Tower", "␣is", "␣in"]
        assert {t.get_text() for t in heatmap.texts} == {"␣Paris", "\\n"}
        assert min(t.get_fontsize() for t in heatmap.texts + heatmap.get_xticklabels()) >= 7
        # the bar sits on the heatmap: over its columns, less than a third of an inch above its top edge
        fig.canvas.draw()
        box, bar_box = heatmap.get_position(), bar.ax.get_position()
        assert box.x0 <= bar_box.x0 < bar_box.x1 <= box.x1
        assert 0 <= (bar_box.y0 - box.y1) * fig.get_figheight() < 0.3
        assert (tmp_path / "lens.png").stat().st_size > 0
    finally:
        plt.close(fig)


@pytest.mark.parametrize("token, shown", [(" Paris", "␣Paris"), ("  x", "␣␣x"), ("\n", "\\n"), ("Paris", "Paris")])
def test_tokens_show_their_spaces(token, shown):
    from hooklab.lens import _shown

    assert _shown(token) == shown

"""Labels in any script: a font that draws them, or one warning and code points — never empty boxes."""

import contextlib
import os
import warnings

import pytest
import torch

from heedful.explain import plots

DATE = "2021年3月5日"


def _covered(text):
    return all(any(ord(c) in points for _, points in plots._label_fonts()) for c in text)


@pytest.mark.skipif(
    not _covered("年月日"), reason="no CJK font installed (Debian: fonts-droid-fallback or fonts-noto-cjk)"
)
def test_cjk_cyrillic_and_arabic_labels_are_drawn_with_real_glyphs(tmp_path):
    tokens = [*DATE, *"марта", *"مارس"]
    assert plots.label_text("".join(tokens)) == "".join(tokens)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.attention_heatmap(torch.rand(3, len(tokens)), ["a", "b", "c"], tokens, tmp_path / "map.png", title=DATE)
    # matplotlib says "Glyph … missing from font(s)" when it draws a box
    assert not [w for w in caught if "missing from font" in str(w.message)]
    assert (tmp_path / "map.png").stat().st_size > 0


def test_without_a_font_for_them_characters_become_code_points_with_one_warning(monkeypatch, tmp_path, capsys):
    latin = frozenset(range(0x20, 0x250))
    monkeypatch.setattr(plots, "_label_fonts", lambda: (("DejaVu Sans", latin),))
    monkeypatch.setattr(plots, "_warned_missing", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # heedful's warning line, not a Python warning
        assert plots.label_text(DATE) == "2021U+5E743U+67085U+65E5"
        assert plots.label_text("日本") == "U+65E5U+672C"
        assert plots.label_text("5 March") == "5 March"
    assert capsys.readouterr().err == (
        "heedful: warning: no installed font draws '年月日': plot labels show such characters as U+XXXX; "
        "install a font that covers them (Debian: apt-get install fonts-noto-cjk)\n"
    )  # once per process


@pytest.mark.parametrize(
    ("curves", "monitor", "panels"),
    [
        ({"train_loss": [2.0, 1.0], "val_loss": [2.1, 1.2], "val_accuracy": [0.5, 0.7], "val_bleu": [3.0, 9.0]},
         "val_bleu", 3),  # loss, accuracy and the BLEU the run is judged by
        ({"train_loss": [2.0, 1.0], "val_loss": [2.1, 1.2], "val_accuracy": [0.5, 0.7]}, "val_loss", 2),
        ({"train_loss": [2.0, 1.0], "val_fid": [40.0, 30.0]}, "val_fid", 2),  # a GAN: loss and FID, no accuracy
        ({"train_loss": [2.0, 1.0], "val_fid": [40.0, 30.0]}, None, 1),
    ],
)  # fmt: skip
def test_the_history_plot_shows_the_metric_the_run_is_judged_by(tmp_path, curves, monitor, panels):
    from PIL import Image

    from heedful.explain.plots import plot_history

    plot_history({"epoch": [1, 2], **curves}, tmp_path / "history.png", monitor)
    assert Image.open(tmp_path / "history.png").size == (450 * panels, 350)  # 4.5 × 3.5 in per panel at 100 dpi


def test_a_grid_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from PIL import Image

    from heedful.errors import UserError

    path = tmp_path / "grid.png"
    images = torch.zeros(4, 1, 2, 2)  # (N, C, R, R), mid-grey
    assert plots.save_grid(images, path, scale=1) == path
    first = path.read_bytes()
    assert first[:4] == b"\x89PNG" and Image.open(path).size == (7, 7)  # 2 × 2 tiles of 2 px, 1-px borders

    def full_disk(self, fp, *args, **kwargs):
        with open(fp, "wb") if isinstance(fp, str | os.PathLike) else contextlib.nullcontext(fp) as half:
            half.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        plots.save_grid(-images, path, scale=1)
    assert path.read_bytes() == first and [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no .tmp left
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"^sample grid .*file/grid\.png: cannot write there \("):
        plots.save_grid(images, tmp_path / "file" / "grid.png", option="sample grid")


def test_the_spectrogram_spans_the_attentions_frames(tmp_path, monkeypatch):
    """13 hops of audio make 4 frames after two halvings (rounded up): 0.16 s; the spectrogram
    stopped at 0.13 s, a white strip under the last attention column."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    features = torch.randn(13, 8)  # (T, n_mels)
    plots.spectrogram_attention(features, torch.full((4, 4), 0.25), tmp_path / "a.png", hop_seconds=0.01,
                                frame_seconds=0.04)  # fmt: skip
    top, bottom = figures[0].axes[:2]
    spec, attention = top.images[0], bottom.images[0]
    assert spec.get_extent() == pytest.approx([0, 0.16, 0, 8]) and attention.get_extent() == pytest.approx(
        [0, 0.16, 0.16, 0]
    )
    assert top.get_xlim() == bottom.get_xlim() == pytest.approx((0, 0.16))
    drawn = spec.get_array()
    assert drawn.shape == (8, 16) and (drawn[:, 13:] == features.min().item()).all()  # padded with its quietest
    assert torch.equal(torch.as_tensor(drawn[:, :13]), features.T)

"""The Python examples of README.md and docs/OPTIMIZE.md run as written.

Each block is executed verbatim in a scratch folder (``configs/`` linked in), with one change: the
dates config is shrunk by appending the tiny overrides every test uses, so the block's training
takes seconds. Whatever the block itself overrides wins. A renamed function, a changed argument or
a comment promising a return value that is no longer true fails here before a reader finds it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import heedful.runs
from tests.conftest import ROOT, tiny_dates_overrides

BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(doc: Path) -> list[str]:
    return BLOCK.findall(doc.read_text(encoding="utf-8"))


def block_with(doc: Path, needle: str) -> str:
    """The one Python block of ``doc`` containing ``needle``."""
    (block,) = [b for b in python_blocks(doc) if needle in b]
    return block


TINY_REVIEWS = [
    "data.tokenizer.vocab_size=300", "data.min_group_size=2", "model.encoder.d_model=16", "model.encoder.n_heads=2",
    "model.encoder.n_encoder_layers=1", "model.encoder.d_ff=32", "train.epochs=2", "train.progress=false",
    "train.tensorboard=false", "train.num_threads=1", "device=cpu",
]  # fmt: skip
TINY = {
    Path("configs/dates.yaml"): tiny_dates_overrides(Path("runs/dates")),
    Path("configs/reviews/amazon.yaml"): TINY_REVIEWS,
}


def shrunk_load_config(path, overrides=None):
    """``load_config`` with a config's tiny overrides first and the caller's after them (so they win);
    other paths (``load_run`` reads a run's saved config with it) as they are."""
    given = list(overrides or [])
    keys = {o.partition("=")[0] for o in given}
    tiny = [o for o in TINY.get(Path(path), []) if o.partition("=")[0] not in keys]
    return REAL_LOAD_CONFIG(path, tiny + given)


REAL_LOAD_CONFIG = heedful.runs.load_config


def test_python_blocks_are_found():
    readme = python_blocks(ROOT / "README.md")
    assert len(readme) >= 5 and readme[0].startswith("from heedful.runs import load_config")


@pytest.mark.slow
def test_readme_quick_start_and_optimize_examples_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.setattr(heedful.runs, "load_config", shrunk_load_config)

    quick_start = block_with(ROOT / "README.md", "history = fit(cfg)")
    scope: dict = {}
    exec(compile(quick_start, "README.md", "exec"), scope)

    # The comments' promises: n_heads from the block's own override, the figure's path, the EvalResult.
    run = scope["run"]
    assert run.cfg.model.n_heads == 8 and run.cfg.train.precision == "bf16"
    printed = capsys.readouterr().out
    assert "[PosixPath('runs/dates/plots/attention-0.png')]" in printed
    assert Path("runs/dates/plots/attention-0.png").is_file()
    result = scope["result"]
    assert 0.0 <= result["exact_match"] <= 1.0
    assert result.artifacts["eval"] == Path("runs/dates/eval-test.json") and result.artifacts["eval"].is_file()

    # docs/OPTIMIZE.md's block ensembles runs/m1 and runs/m2: two copies of the run just trained.
    for name in ("m1", "m2"):
        shutil.copytree("runs/dates", f"runs/{name}")
    optimize_block = block_with(ROOT / "docs" / "OPTIMIZE.md", "prune-heads")
    scope = {}
    exec(compile(optimize_block, "docs/OPTIMIZE.md", "exec"), scope)
    assert (Path("runs/dates-p50") / "config.yaml").is_file()
    assert scope["record"]["method"] == "int8"


def test_readme_attention_core_block_runs_as_written():
    import torch

    from heedful.models.transformer import TransformerConfig, TransformerEncoderDecoder

    # The block's second half names a model and its inputs the reader brings: a two-decoder-layer one.
    config = TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2, d_ff=32,
                               n_encoder_layers=1, n_decoder_layers=2)  # fmt: skip
    scope: dict = {
        "model": TransformerEncoderDecoder(config).eval(),
        "src": torch.randint(1, 20, (3, 7)),
        "tgt": torch.randint(1, 20, (3, 5)),
    }
    block = block_with(ROOT / "README.md", "MultiHeadAttention(512, 8")
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["out"].shape == (2, 10, 512)
    assert scope["weights"].shape == (2, 8, 10, 10)  # (B, H, T_q, T_k), as the comment says
    assert scope["seen"]["decoder.layers.1.cross_attn"].shape == (3, 2, 5, 7)


@pytest.mark.slow
def test_readme_own_reviews_block_runs_as_written(tmp_path, monkeypatch):
    from heedful.train import fit

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.setattr(heedful.runs, "load_config", shrunk_load_config)
    # The reader's own file, with the README's column names: 5 stars where the review says "great".
    words = ["battery", "screen", "camera", "case", "price", "seller", "sound", "box"]
    with open("my_reviews.jsonl", "w", encoding="utf-8") as f:
        for i in range(120):
            good = i % 3 == 0
            body = " ".join(words[(i + j) % 8] for j in range(5)) + (" great" if good else "")
            f.write(json.dumps({"body": body, "stars": 5 if good else 1, "product": f"p{i % 4}"}) + "\n")

    scope: dict = {"load_config": heedful.runs.load_config, "load_run": heedful.runs.load_run, "fit": fit}
    block = block_with(ROOT / "README.md", "my_reviews.jsonl")
    exec(compile(block, "README.md", "exec"), scope)
    p = scope["p"]
    assert scope["run"].run_dir == Path("runs/mine")  # the run the block trained
    assert p.output in p.probabilities and sum(p.probabilities.values()) == pytest.approx(1.0)


def test_explain_aggregations_block_runs_as_written():
    import torch

    from heedful.models.encoder_classifier import ClassifierConfig, EncoderClassifier
    from heedful.models.transformer import TransformerConfig

    torch.manual_seed(0)
    encoder = TransformerConfig(d_model=16, n_heads=2, d_ff=32, n_encoder_layers=2, n_decoder_layers=0, dropout=0.0)
    model = EncoderClassifier(ClassifierConfig(n_classes=3, vocab_size=20, encoder=encoder, dropout=0.0)).eval()
    scope: dict = {"model": model, "tokens": torch.randint(1, 20, (4, 6))}
    block = block_with(ROOT / "docs" / "EXPLAIN.md", "classifier_logit_lens(model, tokens)")
    exec(compile(block, "docs/EXPLAIN.md", "exec"), scope)
    assert scope["rollout"].shape == (4, 6, 6)
    assert scope["ixg"].shape == (4, 6)
    assert {g.shape[::2] for g in scope["gxa"].values()} == {(4, 6)}  # (B, T_q, T_k); pooling has T_q 1
    torch.testing.assert_close(scope["lens"][-1], scope["logits"])  # the comment's "lens[-1] == logits"

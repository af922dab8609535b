"""`heedful align` and ``run.align``: forced alignment of given translations, Pharaoh out, bad input refused."""

import itertools
import re
import sys

import pytest
import yaml

from heedful.explain.alignment import AlignMethod, piece_words
from heedful.runs import load_config, load_run
from heedful.train.trainer import fit

PAIRS = [("5. März 2021", "2021-03-05"), ("March 5, 2021", "2021-03-05"), ("2021年3月5日", "2021-03-05")]


def heedful(*args: str, capsys) -> tuple[int, str, str]:
    """``heedful ARGS`` in this process (no interpreter start-up): exit code, stdout, stderr."""
    from heedful.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["heedful", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path):
    src, tgt = tmp_path / "src.txt", tmp_path / "tgt.txt"
    src.write_text("".join(f"{s}\n" for s, _ in PAIRS), encoding="utf-8")
    tgt.write_text("".join(f"{t}\n" for _, t in PAIRS), encoding="utf-8")
    return src, tgt


def test_align_writes_one_pharaoh_line_per_pair_as_the_python_api_does(dates_run, files, tmp_path, capsys):
    out = tmp_path / "out.txt"
    code, _, err = heedful("align", str(dates_run), "--src", str(files[0]), "--tgt", str(files[1]), "--out", str(out),
                           "--direction", "target", "--device", "cpu", capsys=capsys)  # fmt: skip
    assert code == 0, err
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(PAIRS)
    run = load_run(dates_run, device="cpu")
    links = list(run.align([s for s, _ in PAIRS], [t for _, t in PAIRS], method=AlignMethod(direction="target")))
    assert lines == [" ".join(f"{s}-{t}" for s, t in sorted(pair)) for pair in links]
    for (source, target), pair in zip(PAIRS, links, strict=True):
        # direction "target": every target word (the characters' words: "2021-03-05" is one) links once
        assert sorted(t for _, t in pair) == list(range(len(target.split())))
        assert all(0 <= s < len(source.split()) for s, _ in pair)


def test_alignment_is_streamed(dates_run):
    """An endless input: the first alignments come out without reading the rest."""
    run = load_run(dates_run, device="cpu")
    sources, targets = itertools.cycle(["5. März 2021"]), itertools.repeat("2021-03-05")
    first = list(itertools.islice(run.align(sources, targets), 3))
    assert len(first) == 3 and first[0] == first[2]
    assert piece_words(list("2021-03-05")) == [0] * 10


@pytest.mark.parametrize(
    ("src_text", "tgt_text", "message"),
    [
        ("a\nb\n", "x\n", "tgt.txt line 2: .*src.txt has only 1 line |src.txt line 2: .*tgt.txt has only 1 line "),
        ("a\n\nb\n", "x\ny\nz\n", "src.txt line 2: empty line"),
        ("a\nb\0c\n", "x\ny\n", "src.txt line 2: a NUL byte"),  # as predict --input and training refuse it
    ],
)
def test_align_refuses_files_that_do_not_pair_up(dates_run, tmp_path, src_text, tgt_text, message, capsys):
    src, tgt = tmp_path / "src.txt", tmp_path / "tgt.txt"
    src.write_text(src_text, encoding="utf-8")
    tgt.write_text(tgt_text, encoding="utf-8")
    code, _, err = heedful("align", str(dates_run), "--src", str(src), "--tgt", str(tgt), capsys=capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("heedful: error: ")
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--layers", "5"), "decoder layer 5: the model has 1 (0..0)"),
        (("--heads", "2"), "head 2: the model's cross-attention has 2 (0..1)"),
    ],
)
def test_align_refuses_layers_and_heads_the_model_lacks(dates_run, files, option, message, capsys):
    code, _, err = heedful(
        "align", str(dates_run), "--src", str(files[0]), "--tgt", str(files[1]), *option, capsys=capsys
    )
    assert (code, err) == (2, f"heedful: error: {message}\n")


@pytest.mark.slow
def test_align_refuses_a_model_without_cross_attention(tmp_path, files, capsys):
    config = {
        "task": "translate",
        "name": "no-attention",
        "data": {"source": "dates", "val_size": 8, "test_size": 8},
        "model": {"arch": "rnn", "attention": "none", "embed_dim": 8, "hidden_size": 8},
        "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "progress": False, "tensorboard": False},
        "device": "cpu",
    }
    path = tmp_path / "rnn.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    fit(load_config(path, [f"run_dir={tmp_path / 'rnn'}"]))
    capsys.readouterr()  # fit's epoch lines (stderr)
    code, _, err = heedful(
        "align", str(tmp_path / "rnn"), "--src", str(files[0]), "--tgt", str(files[1]), capsys=capsys
    )
    assert code == 2
    assert err == "heedful: error: this rnn model has no attention to show (model.attention: none)\n"


def test_evaluate_reports_the_field_level_aer_of_the_last_layer(dates_run):
    from heedful.explain.alignment import date_alignment_scores

    run = load_run(dates_run, device="cpu")
    metrics = run.evaluate("test")
    task = run.task
    method = {"last layer, target": AlignMethod(layers=(-1,), direction="target")}
    scores = date_alignment_scores(run.model, task.src_tok, task.tgt_tok, task.data.splits["test"], method)
    assert metrics["alignment_aer"] == pytest.approx(scores["last layer, target"]["aer"], abs=1e-9)


def test_align_says_which_lines_were_cut_to_the_models_length(dates_run, tmp_path, capsys):
    run = load_run(dates_run, device="cpu")
    limit = run.cfg.model.max_len
    long_source, long_target = "5 " * limit, "2021-03-05 " * limit  # more characters than the model's positions
    links = list(run.align(["5. März 2021", long_source], [long_target, "2021-03-05"]))
    assert [(a.source_cut, a.target_cut) for a in links] == [
        (0, len(long_target) - (limit - 1)),
        (len(long_source) - limit, 0),
    ]
    assert max(s for s, _ in links[1]) < limit // 2  # the words past the cut have no links
    src, tgt, out = tmp_path / "src.txt", tmp_path / "tgt.txt", tmp_path / "out.txt"
    src.write_text(f"5. März 2021\n{long_source}\n5. März 2021\n{long_source}\n", encoding="utf-8")
    tgt.write_text(f"2021-03-05\n2021-03-05\n{long_target}\n{long_target}\n", encoding="utf-8")
    code, _, err = heedful("align", str(dates_run), "--src", str(src), "--tgt", str(tgt), "--out", str(out),
                           "--device", "cpu", capsys=capsys)  # fmt: skip
    assert code == 0 and out.read_text(encoding="utf-8").count("\n") == 4  # still one line per pair
    assert err == (
        f"heedful: note: sentences longer than the model takes ({limit} tokens a source, {limit - 1} a target) "
        f"were cut to it before aligning, "
        f"so the words past the cut have no links: --src {src} lines 2, 4; --tgt {tgt} lines 3, 4\n"
    )


def test_align_says_which_side_was_cut_when_one_file_is_both(dates_run, tmp_path, capsys):
    # One file as --src and --tgt: its lines are cut per side (the target takes one piece fewer,
    # for <bos>), so the note must say which side each line number belongs to.
    limit = load_run(dates_run, device="cpu").cfg.model.max_len
    both, out = tmp_path / "both.txt", tmp_path / "out.txt"
    both.write_text(f"2021-03-05\n{'5' * limit}\n{'5 ' * limit}\n", encoding="utf-8")
    code, _, err = heedful("align", str(dates_run), "--src", str(both), "--tgt", str(both), "--out", str(out),
                           "--device", "cpu", capsys=capsys)  # fmt: skip
    assert code == 0 and out.read_text(encoding="utf-8").count("\n") == 3
    assert err == (
        f"heedful: note: sentences longer than the model takes ({limit} tokens a source, {limit - 1} a target) "
        f"were cut to it before aligning, "
        f"so the words past the cut have no links: --src {both} line 3; --tgt {both} lines 2, 3\n"
    )


def test_empty_files_give_an_empty_alignment_file(dates_run, tmp_path, capsys):
    src, tgt, out = tmp_path / "src.txt", tmp_path / "tgt.txt", tmp_path / "out.txt"
    src.write_text("", encoding="utf-8")
    tgt.write_text("", encoding="utf-8")
    code, stdout, err = heedful("align", str(dates_run), "--src", str(src), "--tgt", str(tgt), "--out", str(out),
                                "--device", "cpu", capsys=capsys)  # fmt: skip
    assert (code, stdout, err) == (0, "", "")
    assert out.read_bytes() == b""  # there, and empty: a pipeline sees a result
    assert list(load_run(dates_run, device="cpu").align([], [])) == []

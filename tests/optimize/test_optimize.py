"""heedful optimize: each method's defining property checked numerically on a small model, the
optimized run read back by ``load_run``, and bad input refused in one line with nothing written.

The run is a tiny dates Transformer trained for a few steps: its predictions mean little, which
does not matter here — every check compares the optimized model with the model it came from.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil

import pytest
import safetensors.torch
import torch
from torch import nn

from heedful.attention import MultiHeadAttention
from heedful.errors import CheckpointError, UserError
from heedful.nn.lowrank import factorize, rank_for_energy
from heedful.nn.weights import load_weights
from heedful.optimize import average_tensors, int8, low_rank, optimize
from heedful.runs import load_config, load_run
from heedful.tasks import get_task
from heedful.train.checkpoint import list_checkpoints
from heedful.train.trainer import Trainer
from tests.conftest import ROOT, run_cli, tiny_dates_overrides

SOURCES = ["5. März 2021", "March 3, 1999", "3/4/05", "12 décembre 1987"]


def logits(model, run, sources=SOURCES):
    """Teacher-forced logits (B, T, V) of the sources with a fixed target prefix."""
    tok = run.task.src_tok
    src = tok.batch(sources)
    tgt = run.task.tgt_tok.batch(["2021-03-05"] * len(sources), bos=True)
    with torch.no_grad():
        return model(src, tgt)


# ------------------------------------------------------------------------------------------ int8
def test_an_int8_model_reloaded_from_disk_computes_what_the_one_in_memory_does(run_dir, tmp_path):
    run = load_run(run_dir, "cpu")
    quantized, _ = int8(run)
    out = optimize(run, "int8", tmp_path / "int8")
    reloaded = load_run(out, "cpu")
    assert torch.equal(logits(reloaded.model, reloaded), logits(quantized, run))  # bit for bit
    assert not torch.equal(logits(quantized, run), logits(run.model, run))  # and it is not the float model
    ours = [t.output for t in reloaded.translate(SOURCES, beam=3)]
    assert ours == [t.output for t in run.task.translate(quantized, SOURCES, beam=3)]
    # int8 weights and their scales are what the file holds: no float copy of a quantized weight.
    stored = safetensors.torch.load_file(str(out / "model" / "model.safetensors"))
    assert stored["encoder.layers.0.ff.linear1.weight.int8"].dtype == torch.int8
    assert "encoder.layers.0.ff.linear1.weight" not in stored
    # Embedding tables too: the source one as int8 rows with their scales; the decoder's, tied to
    # the output projection, not at all (it is that projection's int8 weight, stored once).
    assert stored["encoder.embed.embedding.weight.int8"].dtype == torch.int8
    assert not any(name.startswith("decoder.embed.embedding.") for name in stored)
    assert not any(t.is_floating_point() and t.numel() >= 32 * 32 for n, t in stored.items() if "embed" in n)
    table = reloaded.model.decoder.embed.embedding.weight
    assert torch.equal(table, reloaded.model.decoder.output.weight().dequantize())
    assert torch.equal(table, quantized.decoder.embed.embedding.weight)


def test_int8_packs_for_the_engine_it_records_and_reloads_with_it(run_dir, tmp_path, monkeypatch):
    """The engine the weights were packed for is written with the model, and packing on reload
    uses it again (not whatever torch's global engine is then), leaving the global as it was."""
    from heedful.nn import int8 as int8_module

    supported = torch.backends.quantized.supported_engines
    default = torch.backends.quantized.engine
    assert int8_module.int8_engine() == default
    other = next(e for e in ("fbgemm", "onednn", "x86") if e in supported and e != int8_module.int8_engine())
    from heedful.optimize import quantize

    monkeypatch.setattr(quantize, "int8_engine", lambda: other)
    packed_for = []
    real_packing = int8_module._packing_for

    def spying(engine):
        packed_for.append(engine)
        return real_packing(engine)

    monkeypatch.setattr(int8_module, "_packing_for", spying)
    run = load_run(run_dir, "cpu")
    out = optimize(run, "int8", tmp_path / "int8")
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["optimized"][-1] == {"method": "int8", "engine": other}
    packed_for.clear()
    reloaded = load_run(out, "cpu")
    assert packed_for and set(packed_for) == {other}  # built, then every weight packed again, for it
    assert torch.backends.quantized.engine == default
    assert torch.equal(logits(reloaded.model, reloaded), logits(int8(run)[0], run))


def test_int8_packs_the_vocabulary_projection_for_onednn_records_it_and_reloads_it_so(run_dir, tmp_path, monkeypatch):
    """A Linear at least WIDE_OUTPUT_FEATURES wide (here, with the bound lowered to the tiny
    model's widest Linears, those) is packed for oneDNN, the record names it, and reloading packs
    it for oneDNN again (at building and at filling); the reloaded model computes what the one in
    memory does, bit for bit."""
    from heedful.nn import int8 as int8_module

    if int8_module.int8_engine() not in int8_module.FBGEMM_ENGINES:
        pytest.skip(f"torch's default quantized engine here is {int8_module.int8_engine()!r}, not fbgemm's")
    if int8_module.WIDE_ENGINE not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch has no oneDNN quantized engine")
    run = load_run(run_dir, "cpu")
    width = max(m.out_features for m in run.model.modules() if isinstance(m, nn.Linear))
    narrower = [n for n, m in run.model.named_modules() if isinstance(m, nn.Linear) and m.out_features < width]
    assert narrower  # so the bound picks layers out, not all of them
    monkeypatch.setattr(int8_module, "WIDE_OUTPUT_FEATURES", width)
    quantized, summary = int8(run)
    wide = {n for n, m in run.model.named_modules() if isinstance(m, nn.Linear) and m.out_features >= width}
    assert wide and summary["layer_engines"] == dict.fromkeys(sorted(wide), "onednn")
    out = optimize(run, "int8", tmp_path / "int8")
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["optimized"][-1]["layer_engines"] == summary["layer_engines"]
    packed_for = []
    real_packing = int8_module._packing_for
    monkeypatch.setattr(int8_module, "_packing_for", lambda engine: packed_for.append(engine) or real_packing(engine))
    reloaded = load_run(out, "cpu")
    assert packed_for.count("onednn") >= 2 * len(wide)  # at build and at filling, each wide layer
    assert torch.equal(logits(reloaded.model, reloaded), logits(quantized, run))


# ------------------------------------------------------------------------------------- averaging
def test_averaging_two_identical_checkpoints_is_the_identity(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    first, second = list_checkpoints(copy / "checkpoints")
    shutil.copy2(second / "model.safetensors", first / "model.safetensors")
    state = json.loads((first / "state.json").read_text())  # the copy is meant: its sum goes with it
    state["sha256"]["model.safetensors"] = json.loads((second / "state.json").read_text())["sha256"][
        "model.safetensors"
    ]
    (first / "state.json").write_text(json.dumps(state))
    out = optimize(load_run(copy, "cpu"), "average", tmp_path / "averaged", last=2)
    expected = safetensors.torch.load_file(str(second / "model.safetensors"))
    got = safetensors.torch.load_file(str(out / "model" / "model.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_averaging_refuses_a_checkpoint_changed_since_it_was_written(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    damaged = list_checkpoints(copy / "checkpoints")[0] / "model.safetensors"
    data = bytearray(damaged.read_bytes())
    data[(8 + int.from_bytes(data[:8], "little") + len(data)) // 2] ^= 0xFF  # in the tensor data: still parses
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(damaged))}: damaged checkpoint file \(its sha256"):
        optimize(load_run(copy, "cpu"), "average", tmp_path / "averaged", last=2)
    assert not (tmp_path / "averaged").exists()


def test_averaging_is_the_mean_of_the_checkpoints():
    a, b = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}, {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(4)}
    averaged = average_tensors([a, b])
    assert torch.equal(averaged["w"], torch.tensor([2.0, 4.0])) and int(averaged["n"]) == 4


# -------------------------------------------------------------------------------------- low rank
@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_full_rank_svd_reproduces_the_layer(shape):
    torch.manual_seed(0)
    linear = nn.Linear(*shape)
    low = factorize(linear, min(shape))
    x = torch.randn(7, shape[0])
    torch.testing.assert_close(low(x), linear(x), atol=1e-5, rtol=0)
    smaller = factorize(linear, 4)  # and a truncation is not the layer
    assert (smaller(x) - linear(x)).abs().max() > 1e-2


def test_rank_for_energy_keeps_the_asked_share():
    sigma = torch.tensor([3.0, 2.0, 1.0])  # σ² = 9, 4, 1 of 14
    assert [rank_for_energy(sigma, e) for e in (0.5, 9 / 14, 0.92, 0.93)] == [1, 1, 2, 3]


def test_a_low_rank_run_loads_and_matches_the_model_it_wrote(run_dir, tmp_path):
    run = load_run(run_dir, "cpu")
    in_memory, record = low_rank(run, size=0.5)
    out = optimize(run, "low-rank", tmp_path / "low", size=0.5)
    reloaded = load_run(out, "cpu")
    linear1 = reloaded.model.get_submodule("encoder.layers.0.ff.linear1")
    assert type(linear1).__name__ == "LowRankLinear" and linear1.rank == record["ranks"]["encoder.layers.0.ff.linear1"]
    assert linear1.rank == int(0.5 * 32 * 64 / (32 + 64))
    assert "decoder.output" not in record["ranks"]  # tied to the embedding: left whole
    _, record = low_rank(run, size=0.5, layers="ff", untie=True, fine_tune_steps=0, lr=3e-4)
    assert record["untie"] is True and record["untied"] == [] and record["lr"] == 3e-4  # --untie had nothing to untie
    assert torch.equal(logits(reloaded.model, run), logits(in_memory, run))


@pytest.mark.slow
def test_untie_factorizes_the_output_projection_and_leaves_the_embedding_whole(run_dir, tmp_path):
    """``--untie``: the decoder's output projection, tied to the vocabulary table, becomes its own
    rank-r pair — the table's best rank-r approximation — while the embedding keeps the full
    table; the run reloads from disk to the same logits."""
    run = load_run(run_dir, "cpu")
    table = run.model.decoder.embed.embedding.weight.detach().clone()
    out = run_cli("optimize", str(run_dir), "--method", "low-rank", "--size", "0.5", "--untie",
                  "--out", str(tmp_path / "untied"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "untied" / "optimize.json").read_text())
    assert record["untie"] is True and "decoder.output" in record["ranks"] and record["untied"] == ["decoder.output"]
    reloaded = load_run(tmp_path / "untied", "cpu")
    output, r = reloaded.model.decoder.output, record["ranks"]["decoder.output"]
    vocab, width = table.shape
    assert type(output).__name__ == "LowRankLinear" and output.rank == r == int(0.5 * vocab * width / (vocab + width))
    assert torch.equal(reloaded.model.decoder.embed.embedding.weight, table)  # the lookup keeps every value
    U, S, Vh = torch.linalg.svd(table.double(), full_matrices=False)
    best = (U[:, :r] * S[:r]) @ Vh[:r]
    torch.testing.assert_close((output.second.weight @ output.first.weight).double(), best, atol=1e-5, rtol=0)
    in_memory, _ = low_rank(run, size=0.5, untie=True)
    assert torch.equal(logits(reloaded.model, run), logits(in_memory, run))


# ---------------------------------------------------------------------------------- head pruning
@pytest.mark.parametrize("packed", [True, False])
def test_removing_only_heads_whose_output_was_zeroed_changes_nothing(packed):
    torch.manual_seed(0)
    attn = MultiHeadAttention(24, 4, d_head=5, packed=packed).eval()
    x, memory = torch.randn(2, 6, 24), torch.randn(2, 9, 24)
    key = None if packed else memory
    with torch.no_grad():
        attn.head_mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
        zeroed = attn(x, key).output
        attn.head_mask = None
        whole = attn(x, key).output
        attn.prune_heads([0, 2])
        pruned = attn(x, key).output
    assert attn.n_heads == 2 and attn.out_proj.in_features == 10
    torch.testing.assert_close(pruned, zeroed, atol=1e-5, rtol=0)
    assert (pruned - whole).abs().max() > 1e-3  # the removed heads did contribute before


def test_a_pruned_run_is_physically_smaller_and_reloads(run_dir, tmp_path):
    run = load_run(run_dir, "cpu")
    out = optimize(run, "prune-heads", tmp_path / "pruned", fraction=0.5, batches=2)
    reloaded = load_run(out, "cpu")
    heads = [m.n_heads for m in reloaded.model.modules() if isinstance(m, MultiHeadAttention)]
    assert sum(heads) == 3 and all(h == 1 for h in heads)  # 6 heads of 2 → 3 heads, one per module
    qkv = reloaded.model.get_submodule("encoder.layers.0.self_attn.qkv_proj")
    assert qkv.weight.shape == (3 * 16, 32)  # one head of 16 left, in each of the q, k, v blocks
    assert len(reloaded.translate(SOURCES)) == len(SOURCES)
    record = json.loads((out / "optimize.json").read_text())  # every option, defaults included
    assert {k: record[k] for k in ("fraction", "batches", "fine_tune_steps", "lr")} == {
        "fraction": 0.5, "batches": 2, "fine_tune_steps": 0, "lr": 1e-4}  # fmt: skip


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_fine_tuning_runs_at_the_runs_precision(run_dir, precision, monkeypatch):
    """The repair steps after pruning or factorizing train as the run trained (bf16 autocast for
    the Multi30k configs): the logits reaching the loss have that dtype, and the weights move."""
    from heedful.optimize.common import fine_tune

    run = load_run(run_dir, "cpu", overrides=[f"train.precision={precision}", "train.progress=false"])
    seen, loss = [], run.task.loss

    def spying_loss(model, batch):
        hook = model.decoder.output.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
        try:
            return loss(model, batch)
        finally:
            hook.remove()

    monkeypatch.setattr(run.task, "loss", spying_loss)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    losses = fine_tune(run, run.model, steps=2, lr=1e-3)
    assert len(losses) == 2 and all(map(torch.isfinite, map(torch.tensor, losses)))
    assert seen == [torch.bfloat16 if precision == "bf16" else torch.float32] * 2
    assert any(not torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert not run.model.training


def test_fine_tuning_meets_new_batches_each_epoch(run_dir, monkeypatch):
    """A fine-tuning longer than an epoch goes on to the next epoch's batches, in that epoch's
    own order, as the trainer would: it does not repeat the first epoch's batches."""
    from heedful.optimize.common import fine_tune, training_batches

    run = load_run(run_dir, "cpu", overrides=["train.progress=false"])
    epoch0 = training_batches(run, 10_000)
    epoch1 = list(run.task.data.train.batches(1))
    key = lambda batch: tuple(batch["src"].flatten().tolist())  # noqa: E731
    assert [key(b) for b in epoch0] != [key(b) for b in epoch1]  # the data shuffles per epoch
    seen, loss = [], run.task.loss
    monkeypatch.setattr(run.task, "loss", lambda model, batch: (seen.append(key(batch)), loss(model, batch))[1])
    fine_tune(run, run.model, steps=len(epoch0) + 3, lr=1e-4)
    assert seen == [key(b) for b in epoch0] + [key(b) for b in epoch1[:3]]


def test_pruning_rounds_fine_tune_on_from_where_the_last_round_stopped(run_dir, monkeypatch):
    """Two pruning rounds of k fine-tuning steps meet 2k consecutive batches of the stream, not
    the same first k twice."""
    import heedful.optimize.prune as prune_module
    from heedful.optimize.common import fine_tune, training_stream

    run = load_run(run_dir, "cpu", overrides=["train.progress=false"])
    key = lambda batch: tuple(batch["src"].flatten().tolist())  # noqa: E731
    rounds_seen: list[list[tuple]] = []

    def spying_fine_tune(run, model, steps, lr, stream=None):
        seen, loss = [], run.task.loss
        run.task.loss = lambda model, batch: (seen.append(key(batch)), loss(model, batch))[1]
        try:
            return fine_tune(run, model, steps, lr, stream)
        finally:
            run.task.loss = loss
            rounds_seen.append(seen)

    monkeypatch.setattr(prune_module, "fine_tune", spying_fine_tune)
    prune_module.prune_heads(run, fraction=0.5, rounds=2, fine_tune_steps=3, batches=2)
    expected = [key(b) for b in itertools.islice(training_stream(run), 6)]
    assert rounds_seen == [expected[:3], expected[3:]]


def test_fine_tuning_a_run_trained_with_a_weight_average_ends_with_the_average(run_dir):
    """A run trained with ``train.ema_decay`` is judged by its weight average, so its repair ends
    with one too: after a single step the weights are the warm-up average of the start and that
    step, w0 + (1 − 2/11)·(w1 − w0), not the step's own w1."""
    from heedful.optimize.common import fine_tune

    plain = load_run(run_dir, "cpu", overrides=["train.progress=false", "train.ema_decay=null"])
    averaged = load_run(run_dir, "cpu", overrides=["train.progress=false", "train.ema_decay=0.999"])
    w0 = {k: v.clone() for k, v in plain.model.state_dict().items() if v.is_floating_point()}
    fine_tune(plain, plain.model, steps=1, lr=1e-2)
    fine_tune(averaged, averaged.model, steps=1, lr=1e-2)
    w1, got = plain.model.state_dict(), averaged.model.state_dict()
    moved = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert moved
    for k in moved:
        torch.testing.assert_close(got[k], w0[k] + (1 - 2 / 11) * (w1[k] - w0[k]), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- bad input
def gan_run(directory):
    """An imagegen run directory: config and a small untrained SAGAN, nothing trained."""
    from heedful.models.sagan import SAGAN, SAGANConfig

    directory.mkdir()
    shutil.copy2(ROOT / "configs" / "digits_gan.yaml", directory / "config.yaml")
    cfg = SAGANConfig(image_size=8, z_dim=8, width=8, n_classes=10, attention_resolution=4)
    SAGAN(cfg).save_pretrained(directory / "model")
    (directory / "model" / "classes.json").write_text(json.dumps([str(d) for d in range(10)]))
    return directory


def test_a_spectrally_normalised_gan_quantizes_reloads_and_draws_what_fp32_draws(tmp_path):
    """Spectral norm is a parametrization that dynamic int8 cannot swap; baked into plain weights
    first (in eval mode it is a fixed function of stored tensors) it quantizes."""
    gan = load_run(gan_run(tmp_path / "gan"), "cpu")
    assert any(hasattr(m, "parametrizations") for m in gan.model.modules())
    out = optimize(gan, "int8", tmp_path / "int8")
    reloaded = load_run(out, "cpu")
    torch.manual_seed(0)
    z, y = torch.randn(16, 8), torch.arange(16) % 10
    with torch.no_grad():
        fp32 = gan.model.eval()(z, y)
        drawn = reloaded.model(z, y)
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    assert any(isinstance(m, Int8Linear) for m in reloaded.model.modules())  # the z → features layer
    assert not any(hasattr(m, "parametrizations") for m in reloaded.model.modules())
    assert any(hasattr(m, "parametrizations") for m in gan.model.modules())  # the original is untouched
    assert (drawn - fp32).abs().max() < 0.05 and not torch.equal(drawn, fp32)
    in_memory, _ = int8(gan)
    with torch.no_grad():
        assert torch.equal(in_memory(z, y), drawn)  # what was saved is what was computed


def test_bad_input_is_a_user_error_and_writes_nothing(run_dir, tmp_path):
    gan = load_run(gan_run(tmp_path / "gan"), "cpu")
    run = load_run(run_dir, "cpu")
    (tmp_path / "untrained").mkdir()
    shutil.copy2(run_dir / "config.yaml", tmp_path / "untrained" / "config.yaml")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    out = tmp_path / "out"
    cases = [
        (gan, "prune-heads", {}, "model without multi-head attention: no heads to prune"),
        (run, "distil", {}, "unknown method 'distil'"),
        (
            run,
            "int8",
            {"fraction": 0.5},
            "method='int8' (--method) does not take fraction (--fraction) (it takes no options)",
        ),
        (run, "average", {"last": 9}, "only 2 checkpoints are kept"),
        (run, "low-rank", {}, "give one of energy (--energy), e.g. 0.9, or size (--size), e.g. 0.5"),
        (run, "prune-heads", {"fraction": 1.5}, "fraction=1.5 (--fraction): must be in (0, 1)"),
        (
            run,
            "prune-heads",
            {"untie": True},
            "method='prune-heads' (--method) does not take untie (--untie) (it takes fraction (--fraction), ",
        ),
        (run, "prune-heads", {"lr": -1.0, "fine_tune_steps": 2}, "lr=-1.0 (--lr): a learning rate above 0"),
        (run, "low-rank", {"energy": 0.9, "lr": float("nan")}, "lr=nan (--lr): a learning rate above 0"),
        (run, "low-rank", {"energy": 0.9, "fine_tune_steps": -1}, "fine_tune_steps=-1 (--fine-tune-steps): 0 or more"),
    ]
    for source, method, options, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            optimize(source, method, out, **options)
        assert not out.exists(), (method, options)
    with pytest.raises(UserError, match="has no trained model yet"):
        load_run(tmp_path / "untrained", "cpu")
    with pytest.raises(UserError, match="exists and is not empty"):
        optimize(run, "int8", taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_outputs_and_orders_that_cannot_work_are_refused_in_one_line(run_dir, tmp_path):
    """Each of these was a traceback (NotADirectoryError, AttributeError) or wrote into the run."""
    run = load_run(run_dir, "cpu")
    (tmp_path / "a_file").write_text("x")
    factorized = optimize(run, "low_rank", tmp_path / "lr", size=0.5)  # the name optimize.json records
    cases = [
        (run, "int8", tmp_path / "a_file" / "sub", "a_file is a file, not a folder"),
        (run, "int8", run_dir / "inner", f"is inside the run {run_dir}; give a folder outside it"),
        (run, "int8", run_dir / "checkpoints" / "step-99999", "is inside the run"),
        (load_run(factorized, "cpu"), "prune-heads", tmp_path / "p", "projections are factorized (low-rank); prune"),
        (str(run_dir), "int8", tmp_path / "q", "optimize takes a run opened by load_run('runs/…'), not '"),
    ]
    for source, method, out, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            optimize(source, method, out)
        assert not out.exists()
    assert json.loads((factorized / "optimize.json").read_text())["method"] == "low_rank"


def test_an_averaged_run_converts_to_ctranslate2_like_the_run(run_dir, tmp_path):
    """Averaging changes the weights only; the conversion refused it as 'an optimized one'."""
    pytest.importorskip("ctranslate2", reason="CTranslate2 export needs the export extra")
    from heedful.optimize.ct2 import export_ctranslate2

    averaged = load_run(optimize(load_run(run_dir, "cpu"), "average", tmp_path / "avg", last=2), "cpu")
    assert (export_ctranslate2(averaged, tmp_path / "ct2") / "model.bin").is_file()
    pruned = load_run(optimize(load_run(run_dir, "cpu"), "prune-heads", tmp_path / "p", fraction=0.5), "cpu")
    with pytest.raises(UserError, match="as trained"):  # a structural change still is refused
        export_ctranslate2(pruned, tmp_path / "ct2-p")


@pytest.mark.slow
def test_the_cli_says_it_in_one_line_with_exit_code_2(run_dir, tmp_path):
    out = tmp_path / "out"
    gan = gan_run(tmp_path / "gan")
    result = run_cli("optimize", str(gan), "--method", "prune-heads", "--out", str(out))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("heedful: error: ") and "no heads to prune" in result.stderr
    result = run_cli("optimize", str(run_dir), "--method", "int8", "--out", str(out), "--no-such-option")
    assert result.returncode == 2 and "No such option" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_the_cli_writes_a_run_that_translate_reads(run_dir, tmp_path):
    out = tmp_path / "int8"
    result = run_cli("optimize", str(run_dir), "--method", "int8", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "int8:" in result.stdout and (out / "optimize.json").is_file()
    translated = run_cli("translate", str(out), "--beam", "2", stdin="5. März 2021\n")
    assert translated.returncode == 0, translated.stderr
    assert len(translated.stdout.splitlines()) == 1


# ------------------------------------------------------------------------------------- ensembles
def test_a_translation_ensemble_of_one_run_translates_as_the_run(run_dir):
    from heedful.runs import load_ensemble

    run, ensemble = load_run(run_dir, "cpu"), load_ensemble([run_dir], "cpu")
    for beam in (1, 3):
        alone, together = run.translate(SOURCES, beam=beam), ensemble.translate(SOURCES, beam=beam)
        assert [t.output for t in together] == [t.output for t in alone]
        assert [t.score for t in together] == pytest.approx([t.score for t in alone], abs=1e-5)
    assert [p.output for p in ensemble.predict(SOURCES)] == [p.output for p in run.predict(SOURCES)]


def test_translate_with_an_ensemble_of_another_vocabulary_is_refused(run_dir, tmp_path):
    from heedful.runs import load_ensemble

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    vocab = json.loads((other / "model" / "tgt_vocab.json").read_text())
    vocab["itos"][4:6] = vocab["itos"][5:3:-1]  # "1" before "0": same size, other ids
    (other / "model" / "tgt_vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(UserError, match="another vocabulary"):
        load_ensemble([run_dir, other], "cpu")


@pytest.mark.slow
def test_translate_ensemble_on_the_command_line(run_dir, tmp_path):
    twin = shutil.copytree(run_dir, tmp_path / "twin")  # the run itself twice is refused as a slip
    alone = run_cli("translate", str(run_dir), "--beam", "3", stdin="\n".join(SOURCES) + "\n")
    both = run_cli("translate", str(run_dir), "--beam", "3", "--ensemble", str(twin), stdin="\n".join(SOURCES) + "\n")
    assert alone.returncode == 0 and both.returncode == 0, both.stderr
    assert both.stdout == alone.stdout and len(both.stdout.splitlines()) == len(SOURCES)


def test_overwrite_replaces_only_an_earlier_output_and_only_once_the_new_one_is_done(run_dir, tmp_path):
    run = load_run(run_dir, "cpu")
    out = optimize(run, "int8", tmp_path / "out")
    assert json.loads((out / "optimize.json").read_text())["method"] == "int8"
    with pytest.raises(UserError, match=re.escape("(or overwrite (--overwrite): an earlier optimize or export wrote")):
        optimize(run, "average", out, last=2)
    with pytest.raises(UserError, match=re.escape("give one of energy (--energy)")):  # the old output stays whole
        optimize(run, "low-rank", out, overwrite=True)
    assert json.loads((out / "optimize.json").read_text())["method"] == "int8"

    assert optimize(run, "average", out, last=2, overwrite=True) == out
    assert json.loads((out / "optimize.json").read_text())["method"] == "average"
    assert load_run(out, "cpu").model.state_dict().keys() == run.model.state_dict().keys()  # float again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.tmp / .out.old left

    mine = tmp_path / "mine"  # not heedful's output: never replaced
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(
        UserError, match=re.escape("overwrite (--overwrite) replaces only what heedful optimize or export wrote")
    ):
        optimize(run, "int8", mine, overwrite=True)
    with pytest.raises(UserError, match=f"is \\(or holds\\) the run {re.escape(str(run_dir))} itself"):
        optimize(run, "int8", run_dir.parent, overwrite=True)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(UserError, match=re.escape("file: is a file; give a new out (--out) folder")):
        optimize(run, "int8", tmp_path / "file")
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_the_cli_overwrites_an_earlier_output_when_asked(run_dir, tmp_path):
    out = tmp_path / "out"
    args = ["optimize", str(run_dir), "--method", "int8", "--out", str(out)]
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 2 and "--overwrite" in again.stderr, again.stderr
    replaced = run_cli(*args[:3], "average", "--last", "2", "--out", str(out), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((out / "optimize.json").read_text())["method"] == "average"
    exported = run_cli("export", str(run_dir), "--format", "onnx", "--out", str(out), "--overwrite")
    assert exported.returncode == 0 and (out / "export.json").is_file() and not (out / "optimize.json").exists()


def test_fine_tuning_may_start_from_an_averaged_run_not_from_a_restructured_one(run_dir, tmp_path, monkeypatch):
    """Averaging changes only the weights, so ``train.init_from`` takes an averaged run's model as
    it is; int8 changed the modules, so the fresh model cannot hold its weights: refused, named."""
    averaged = optimize(load_run(run_dir, "cpu"), "average", tmp_path / "avg", last=2)
    monkeypatch.setattr(Trainer, "_loop", lambda self, *args: None)  # set up (init_from included), train no step
    cfg = load_config(
        ROOT / "configs" / "dates.yaml", tiny_dates_overrides(tmp_path / "tuned", **{"train.init_from": averaged})
    )
    trainer = Trainer(get_task(cfg.task)(cfg), cfg)
    trainer.fit()
    want = type(trainer.model)(trainer.model.config)
    load_weights(want, averaged / "model" / "model.safetensors")
    for (name, got), (_, expected) in zip(trainer.model.state_dict().items(), want.state_dict().items(), strict=True):
        assert torch.equal(got, expected), name

    quantized = optimize(load_run(run_dir, "cpu"), "int8", tmp_path / "int8")
    cfg = load_config(
        ROOT / "configs" / "dates.yaml", tiny_dates_overrides(tmp_path / "from-int8", **{"train.init_from": quantized})
    )
    with pytest.raises(
        CheckpointError,
        match=r"^train.init_from: .*int8/model: holds a model whose structure heedful optimize changed \(int8\)",
    ):
        Trainer(get_task(cfg.task)(cfg), cfg).fit()
    assert not (tmp_path / "from-int8").exists()


def test_an_optimized_run_has_a_name_of_its_own_and_serves_beside_its_run(run_dir, tmp_path):
    """``heedful serve runs/dates runs/dates-int8`` refused two runs named 'dates'."""
    pytest.importorskip("fastapi")
    from heedful.serve.app import create_app

    run = load_run(run_dir, "cpu")
    averaged = load_run(optimize(run, "average", tmp_path / "avg", last=2), "cpu")
    chained = load_run(optimize(averaged, "low_rank", tmp_path / "low", size=0.5), "cpu")
    assert (averaged.cfg.name, chained.cfg.name) == (f"{run.cfg.name}-average", f"{run.cfg.name}-average-low-rank")
    from fastapi.testclient import TestClient

    with TestClient(create_app([run, averaged, chained])) as client:
        listed = client.get("/v1/models").json()
        answer = client.post("/v1/models/dates-average-low-rank/predict", json={"texts": SOURCES[:1]})
    assert [m["name"] for m in listed["models"]] == ["dates", "dates-average", "dates-average-low-rank"]
    assert answer.status_code == 200 and answer.json()["model"] == "dates-average-low-rank"


def test_an_exports_refusals_name_the_argument_and_the_flag(tmp_path):
    """``open_export`` is the Python twin of opening an export on the command line: its refusals
    name both spellings (they said only ``--device``, ``--quantization``), before any runtime loads."""
    from heedful.optimize.export import open_export

    with pytest.raises(UserError) as refused:
        open_export(tmp_path, device="cuda")
    assert str(refused.value) == (
        f"device='cuda' (--device): an export computes on the CPU (onnxruntime or CTranslate2), and {tmp_path} is one"
    )
    (tmp_path / "export.json").write_text(json.dumps({"format": "onnx", "kind": "seq2seq"}))
    with pytest.raises(UserError) as refused:
        open_export(tmp_path, quantization="int8")
    assert (
        str(refused.value)
        == "quantization (--quantization) is for CTranslate2 exports (an ONNX export computes in float32)"
    )
    (tmp_path / "export.json").write_text(json.dumps({"format": "ctranslate2", "kind": "seq2seq"}))
    with pytest.raises(UserError) as refused:
        open_export(tmp_path, quantization="int4")
    assert str(refused.value) == "quantization='int4' (--quantization): choose from float32, int8"

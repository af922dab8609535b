"""The imagegen task on the bundled 8×8 digits at toy size: training through the shared trainer,
exact resumption, the domain FID's sanity (real vs real near 0, growing with noise), generation
and attention overlays from the CLI, and bad image folders."""

import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from heedful.data.images import image_folder, mnist, read_idx
from heedful.errors import CheckpointError, DataError
from heedful.metrics import feature_statistics, frechet_distance
from heedful.metrics.fid import FeatureClassifier
from heedful.runs import load_config, load_run
from heedful.tasks import get_task
from heedful.tasks.imagegen import CLASSIFIER_FILE, CLASSIFIER_SUMS
from heedful.train import History, fit
from heedful.train.checkpoint import list_checkpoints
from tests.conftest import SHARED_DATA, assert_same_latest_checkpoint, run_cli

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "model.width": 16,
    "model.z_dim": 16,
    "gan.fid_samples": 200,
    "gan.classifier_epochs": 6,
    "train.epochs": 2,
    "train.batch_size": 32,
    "train.max_minutes": None,
    "train.progress": False,
    "train.tensorboard": False,
    "train.num_threads": 1,
    "device": "cpu",
}


def config(run_dir, **extra):
    values = {**TINY, "run_dir": str(run_dir), **extra}
    return load_config(
        ROOT / "configs" / "digits_gan.yaml", [f"{k}={'null' if v is None else v}" for k, v in values.items()]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gan") / "run"
    return run_dir, fit(config(run_dir))


@pytest.mark.slow
def test_training_reports_fid_and_class_accuracy_and_saves_sample_grids(trained):
    run_dir, history = trained
    assert history["epoch"] == [1, 2]
    assert all(v >= 0 for v in history["val_fid"]) and all(0 <= v <= 1 for v in history["val_class_accuracy"])
    assert history["val_classifier_accuracy"][0] > 0.9  # the feature network recognises real digits
    assert (run_dir / "plots" / "samples-epoch-002.png").read_bytes()[:4] == b"\x89PNG"
    run = load_run(run_dir, device="cpu")
    metrics = run.evaluate("test")
    assert set(metrics) == {"fid", "classifier_accuracy", "class_accuracy"}


@pytest.mark.slow
def test_a_resumed_gan_run_continues_bit_identically(tmp_path, monkeypatch):
    extra = {"train.checkpoint_every": 10, "train.keep_checkpoints": 5}
    fit(config(tmp_path / "straight", **extra))
    task_class = get_task("imagegen")
    original = task_class.loss
    calls = {"n": 0}

    def crashing(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return original(self, model, batch)

    monkeypatch.setattr(task_class, "loss", crashing)
    cfg = config(tmp_path / "resumed", **extra)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    assert list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1].name == "step-10"
    monkeypatch.setattr(task_class, "loss", original)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("resuming must not unpickle"))
    fit(cfg, resume=True)
    assert_same_latest_checkpoint(tmp_path / "straight", tmp_path / "resumed")
    assert (
        History.load(tmp_path / "straight" / "history.json")["val_fid"]
        == History.load(tmp_path / "resumed" / "history.json")["val_fid"]
    )


@pytest.mark.slow
def test_domain_fid_is_near_zero_for_real_against_real_and_grows_with_noise(trained):
    run = load_run(trained[0], device="cpu")
    run.evaluate("test")  # builds the data
    task = run.task
    train_images = task.data.train.images
    held = task.data.splits["test"]["images"]
    real = feature_statistics(task._features(held)[0])
    other_real = feature_statistics(task._features(train_images)[0])
    distances = []
    for sigma in (0.0, 0.2, 0.5, 1.0):
        noisy = held + sigma * torch.randn(held.shape, generator=torch.Generator().manual_seed(0))
        distances.append(frechet_distance(*real, *feature_statistics(task._features(noisy)[0])))
    assert distances[0] == pytest.approx(0.0, abs=1e-6)
    assert distances == sorted(distances) and distances[-1] > 10 * frechet_distance(*real, *other_real)


@pytest.mark.slow
def test_cli_generates_a_grid_of_one_class_and_attention_overlays(trained, tmp_path):
    grid = tmp_path / "grid.png"
    result = run_cli("generate", str(trained[0]), "--n", "16", "--class", "3", "--out", str(grid), "--show-attention")
    assert result.returncode == 0, result.stderr
    assert grid.read_bytes()[:4] == b"\x89PNG"
    overlays = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("attention overlay")]
    assert overlays == [str(tmp_path / f"grid-attention-{i}.png") for i in range(3)]  # named after the grid
    assert all(Path(p).is_file() for p in overlays)
    bad = run_cli("generate", str(trained[0]), "--class", "11")
    assert bad.returncode == 2 and "unknown class '11'" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("n", "class_name", "seed"), [(16, None, None), (2, "3", 5)])
def test_the_attention_overlays_are_of_the_grids_own_first_images(trained, n, class_name, seed):
    """They were drawn from other noise (seed sample_seed + i) and, without --class, other classes."""
    run = load_run(trained[0], device="cpu")
    grid = run.generate(n, class_name, seed)
    explained = run.task.explain_grid(run.model, n, class_name, seed)
    assert len(explained) == min(3, n)
    for image, explanation in zip(grid, explained, strict=False):
        torch.testing.assert_close(explanation.context["image"], image, atol=1e-5, rtol=0)
    classes = [e.prediction.output for e in explained]
    assert classes == ([class_name] * 2 if class_name else run.task.classes[:3])


@pytest.mark.slow
def test_generate_refuses_a_bad_out_or_a_model_without_attention_before_writing(trained, tmp_path):
    run_dir = trained[0]
    for out, message in [
        (tmp_path / "grid.txt", "--out .*grid.txt: give a file name ending in .png or .jpg"),
        (tmp_path / "grid", "--out .*grid: give a file name ending in .png or .jpg"),
        (run_dir / "config.yaml", "would overwrite .*own files"),
        (run_dir / "plots" / "history.png", "would overwrite .*own files"),
    ]:
        result = run_cli("generate", str(run_dir), "--n", "4", "--out", str(out))
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "grid.txt").exists() and not (tmp_path / "grid").exists()
    huge = run_cli("generate", str(run_dir), "--n", "100000", "--out", str(tmp_path / "huge.png"))  # 2.4 GB of grid
    assert huge.returncode == 2 and not (tmp_path / "huge.png").exists()
    assert huge.stderr == "heedful: error: --n 100000: one grid holds at most 1,024 images; more, from Python: " \
                          "run.generate(n)\n"  # fmt: skip
    plain = tmp_path / "plain"
    fit(config(plain, **{"model.attention_resolution": None, "train.epochs": 1, "gan.classifier_epochs": 1}))
    grid = tmp_path / "plain.png"
    result = run_cli("generate", str(plain), "--n", "4", "--out", str(grid), "--show-attention")
    assert result.returncode == 2 and "no self-attention block" in result.stderr
    assert not grid.exists() and result.stdout == ""
    one = run_cli("generate", str(plain), "--n", "1", "--out", str(grid))
    assert one.returncode == 0 and one.stdout == f"1 image: {grid}\n"


def flip_a_byte_in_the_tensor_data(weights):
    """Change one bit halfway through the tensor data, past the JSON header: the file still parses."""
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + (len(data) - header) // 2] ^= 0x01
    weights.write_bytes(bytes(data))


def classifier_changed(folder):
    return (
        f"{folder / CLASSIFIER_FILE}: changed since it was written (its sha256 is not the one {CLASSIFIER_SUMS} "
        "recorded beside it)"
    )


def test_the_feature_classifier_records_its_sha256_and_a_changed_byte_is_refused(tmp_path):
    """Its sum is written after it (config.json comes before the task's files), and checked before
    a tensor is read; a folder saved before heedful kept it loads unchecked."""
    cfg = config(tmp_path / "run")
    task = get_task("imagegen")(cfg)
    task.classifier = FeatureClassifier(1, cfg.model.image_size, 10)
    folder = tmp_path / "model"
    folder.mkdir()
    task.save_artifacts(folder)
    digest = hashlib.sha256((folder / CLASSIFIER_FILE).read_bytes()).hexdigest()
    assert json.loads((folder / CLASSIFIER_SUMS).read_text()) == {"sha256": {CLASSIFIER_FILE: digest}}
    loaded = get_task("imagegen")(cfg)
    loaded.load_artifacts(folder)
    for name, value in task.classifier.state_dict().items():
        assert torch.equal(loaded.classifier.state_dict()[name], value), name
    flip_a_byte_in_the_tensor_data(folder / CLASSIFIER_FILE)
    with pytest.raises(CheckpointError) as caught:
        get_task("imagegen")(cfg).load_artifacts(folder)
    assert str(caught.value) == classifier_changed(folder)
    (folder / CLASSIFIER_SUMS).unlink()  # as saved before the sum was kept
    get_task("imagegen")(cfg).load_artifacts(folder)


@pytest.mark.slow
def test_a_trained_gan_run_with_a_changed_feature_classifier_is_refused_in_one_line(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    folder = run_dir / "model"
    digest = hashlib.sha256((folder / CLASSIFIER_FILE).read_bytes()).hexdigest()
    assert json.loads((folder / CLASSIFIER_SUMS).read_text()) == {"sha256": {CLASSIFIER_FILE: digest}}
    flip_a_byte_in_the_tensor_data(folder / CLASSIFIER_FILE)
    with pytest.raises(CheckpointError) as caught:
        load_run(run_dir, device="cpu")
    # No checkpoint keeps the classifier: training again writes it.
    assert str(caught.value) == classifier_changed(folder) + (
        f"; restore it from a copy, or train the run again (heedful train {run_dir} --overwrite)"
    )
    result = run_cli("evaluate", str(run_dir), "--device", "cpu")
    assert result.returncode == 2 and result.stderr == f"heedful: error: {caught.value}\n"


@pytest.mark.slow
def test_train_init_from_a_gan_run_with_a_changed_feature_classifier_is_refused_as_init_from(trained, tmp_path):
    # The refusal names the other run's file: prefixed train.init_from: as a changed model.safetensors is.
    first = tmp_path / "first"
    shutil.copytree(trained[0], first)
    flip_a_byte_in_the_tensor_data(first / "model" / CLASSIFIER_FILE)
    with pytest.raises(CheckpointError) as caught:
        fit(config(tmp_path / "second", **{"train.init_from": str(first)}))
    assert str(caught.value) == f"train.init_from: {classifier_changed(first / 'model')}" + (
        f"; restore it from a copy, or train the run again (heedful train {first} --overwrite)"
    )
    assert not (tmp_path / "second").exists()


def test_an_odd_sized_or_unreadable_image_names_the_file(tmp_path):
    from PIL import Image

    for cls, size in (("a", 8), ("b", 8), ("b", 9)):
        folder = tmp_path / "images" / cls
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", (size, size)).save(folder / f"{size}.png")
    (tmp_path / "images" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
        image_folder(tmp_path / "images")
    (tmp_path / "images" / "a" / "broken.png").unlink()
    with pytest.raises(DataError, match=r"9\.png: 9×9 grey, but 8\.png is 8×8 grey"):
        image_folder(tmp_path / "images")
    images, labels, classes = image_folder(tmp_path / "images", on_bad="skip")
    assert images.shape == (2, 1, 8, 8) and classes == ["a", "b"] and labels.tolist() == [0, 1]


def test_a_folder_of_too_few_images_or_an_empty_class_is_refused(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / "images" / cls / f"{i}.png")
    (tmp_path / "images" / ".ipynb_checkpoints").mkdir()  # not a class
    assert image_folder(tmp_path / "images")[2] == ["a", "b"]
    # 6 images, batch 16: it trained no step, saved the untrained model and exited 0
    values = {"data.source": "folder", "data.root": str(tmp_path / "images"), "model.n_classes": 2,
              "model.image_size": 8, "train.batch_size": 16}  # fmt: skip
    cfg = config(tmp_path / "run", **values)
    with pytest.raises(DataError, match=r"images: \d training images, fewer than one batch \(train.batch_size 16\)"):
        get_task("imagegen")(cfg).build_data(cfg)
    (tmp_path / "images" / "c").mkdir()
    (tmp_path / "images" / "c" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"images/c: a class folder with no readable PNG or JPEG images$"):
        image_folder(tmp_path / "images")


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="needs ../shared/data/mnist")
def test_the_mnist_idx_files_read_with_their_known_counts(tmp_path):
    labels = read_idx(SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10_000,) and list(torch.bincount(torch.from_numpy(labels.astype("int64")))) == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009,
    ]  # fmt: skip
    (tmp_path / "bad-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad-idx3-ubyte: holds"):
        read_idx(tmp_path / "bad-idx3-ubyte")


def test_a_folder_without_the_mnist_files_names_the_file_it_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = r"^mnist/t10k-images-idx3-ubyte.gz: file not found \(nor t10k-images-idx3-ubyte beside it; a relative"
    with pytest.raises(DataError, match=expected + r" path, read from .*\)$"):
        mnist(Path("mnist"))

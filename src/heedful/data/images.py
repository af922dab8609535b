"""Images with class labels, as float tensors in [−1, 1]: (N, C, H, W) images and (N,) labels.

Sources: scikit-learn's bundled 8×8 digits (needs no files), MNIST IDX files (gzipped or not), and
a folder of PNG/JPEG images whose sub-folder names are the classes. A file that cannot be read,
or an image of another size or mode than the rest, stops with one line naming the file — or, with
``on_bad="skip"``, is counted and reported.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from heedful.errors import DataError, not_found
from heedful.extras import optional_import

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def sklearn_digits() -> tuple[Tensor, Tensor, list[str]]:
    """The 1,797 bundled 8×8 digits (values 0–16) -> (N, 1, 8, 8) in [−1, 1], labels, class names."""
    digits = optional_import("sklearn.datasets", "the bundled digits (data.source: digits)").load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    return images, torch.tensor(digits.target), [str(c) for c in range(10)]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): magic 0x0000 08 D, then D big-endian sizes, then uint8 data."""
    try:
        raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    except FileNotFoundError:
        raise DataError(not_found(path)) from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    dims = raw[3]
    header = 4 + 4 * dims
    shape = struct.unpack(f">{dims}I", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"{path}: holds {len(raw) - header} bytes of data, its header promises {int(np.prod(shape))}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def mnist(root: Path, prefix: str = "t10k") -> tuple[Tensor, Tensor, list[str]]:
    """MNIST images (N, 1, 28, 28) in [−1, 1] and labels from ``root/<prefix>-*-idx?-ubyte(.gz)``."""

    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}.gz", f"{prefix}-{kind}"):
            if (root / name).exists():
                return root / name
        raise DataError(not_found(root / f"{prefix}-{kind}.gz", f"nor {prefix}-{kind} beside it"))

    images = read_idx(find("images-idx3-ubyte"))
    labels = read_idx(find("labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels")
    x = torch.from_numpy(images.astype(np.float32))[:, None] / 127.5 - 1.0
    return x, torch.from_numpy(labels.astype(np.int64)), [str(c) for c in range(10)]


def image_folder(root: Path, on_bad: str = "error") -> tuple[Tensor, Tensor, list[str]]:
    """``root/<class>/*.png|jpg``: every image must have the size and mode of the first."""
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"{root}: not a folder of class sub-folders")
    # Hidden folders (.ipynb_checkpoints, __MACOSX from an unzip) are not classes.
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected {root}/<class>/<image>.png)")
    images, labels, skipped, first = [], [], 0, None
    for index, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as image:
                    size, raw_mode = image.size, image.mode
                    # 16/32-bit grey would be clipped to 0–255 by convert(): refused below instead
                    deep = raw_mode.startswith(("I", "F"))
                    array = None if deep else np.asarray(image.convert(raw_mode if raw_mode in ("L", "RGB") else "RGB"))
            except (UnidentifiedImageError, OSError) as exc:
                problem = f"{path}: not a readable image ({type(exc).__name__})"
            else:
                mode = None if array is None else array.ndim
                first = first or (None if mode is None else (size, mode, path))
                if mode is None:
                    problem = f"{path}: 16-bit or 32-bit pixels (mode {raw_mode}); heedful reads 8-bit grey or RGB"
                elif (size, mode) == first[:2]:
                    images.append(array)
                    labels.append(index)
                    continue
                else:
                    problem = f"{path}: {size[0]}×{size[1]} {'RGB' if mode == 3 else 'grey'}, but {first[2].name} is "
                    problem += (
                        f"{first[0][0]}×{first[0][1]} {'RGB' if first[1] == 3 else 'grey'}; resize them to one size"
                    )
            if on_bad == "error":
                raise DataError(problem)
            skipped += 1
    if skipped:
        print(f"{root}: skipped {skipped} unreadable or odd-sized images", file=sys.stderr)
    seen = set(labels)
    empty = [name for index, name in enumerate(classes) if index not in seen]
    if images and empty:  # a class the generator would be asked for but never see
        raise DataError(f"{root / empty[0]}: a class folder with no readable PNG or JPEG images")
    if not images:
        raise DataError(f"{root}: no readable PNG or JPEG images")
    x = torch.from_numpy(np.stack(images).astype(np.float32)) / 127.5 - 1.0
    x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x, torch.tensor(labels), classes


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, held_out): ``fraction`` of each class held out, seeded."""
    g = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=g)]
        n = round(len(rows) * fraction)
        held.append(rows[:n])
        train.append(rows[n:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def pad_to(images: Tensor, size: int) -> Tensor:
    """Pad (N, C, H, W) images with the background value (−1) to size × size, centred."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise DataError(f"images of {h}×{w} are larger than the model's {size}×{size}; set model.image_size")
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(images, (left, size - w - left, top, size - h - top), value=-1.0)

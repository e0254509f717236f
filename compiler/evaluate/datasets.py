"""Readers for single-object tracking benchmarks laid out as their toolkits ship them.

- ``lasot``: ``<root>/<class>/<class>-<n>/{img/00000001.jpg, groundtruth.txt, full_occlusion.txt,
  out_of_view.txt}`` (LaSOT, LaSOT-ext) or the flat ``<root>/<class>-<n>/...``; a
  ``testing_set.txt`` in the root restricts the run to the sequences it names, as SAMURAI's
  LaSOT script does.
- ``got10k``: a subset folder (``val``, ``test``) with ``list.txt`` and ``<seq>/{00000001.jpg,
  groundtruth.txt, absence.label, cover.label, meta_info.ini}``; the test split's ground truth
  has the first frame only, enough to run but not to score.
- ``otb``: ``<root>/<seq>/{img/0001.jpg, groundtruth_rect.txt}``, boxes separated by commas,
  tabs or spaces.

Datasets are untrusted input: every problem is a :class:`DatasetError` whose one-line message
names the file (and line), because a traceback from deep inside a 280-sequence run says nothing
about which of 685k frames is wrong.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samurai_onnx.runtime.video import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

FORMATS = ("lasot", "got10k", "otb")
MAX_TEXT_BYTES = 32 * 1024 * 1024  # LaSOT's longest ground truth is ~0.3 MB
_SEPARATORS = re.compile(r"[,\t ]+")


class DatasetError(ValueError):
    """A dataset or result file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Sequence:
    """One benchmark sequence: where its frames are and what its ground truth says.

    ``groundtruth`` is ``[N, 4]`` ``x, y, w, h`` (N == ``num_frames``; 1 for GOT-10k's test
    split), ``visible`` marks frames where the target can be seen (LaSOT: neither fully occluded
    nor out of view; GOT-10k: cover > 0), None when the dataset has no such labels.
    """

    name: str
    frames_dir: Path
    num_frames: int
    groundtruth: np.ndarray
    groundtruth_path: Path
    visible: np.ndarray | None = None
    image_size: tuple[int, int] | None = None  # (width, height) when the dataset states it

    @property
    def first_box(self) -> tuple[float, float, float, float]:
        x, y, w, h = (float(v) for v in self.groundtruth[0])
        return (x, y, w, h)

    @property
    def scorable(self) -> bool:
        return len(self.groundtruth) == self.num_frames


@dataclass(frozen=True)
class Dataset:
    format: str
    root: Path
    sequences: list[Sequence]

    def select(self, names: list[str] | None) -> Dataset:
        """The named sequences, in the given order; an unknown name is an error."""
        if not names:
            return self
        by_name = {s.name: s for s in self.sequences}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise DatasetError(
                f"sequence(s) {', '.join(unknown[:5])} not in {self.root} "
                f"({len(by_name)} {self.format} sequences)"
            )
        return Dataset(self.format, self.root, [by_name[n] for n in names])


def read_text(path: Path, what: str) -> list[str]:
    """The file's lines, refusing what is missing, huge or not text."""
    if not path.is_file():
        raise DatasetError(f"{path}: {what} is missing")
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise DatasetError(f"{path}: {what} is {size / 2**20:.0f} MiB; refusing more than 32 MiB")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: {what} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read {what} ({e.strerror})") from None


def _content_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of every line; blank lines are allowed only at the end."""
    lines = [(i + 1, line.strip()) for i, line in enumerate(read_text(path, what))]
    while lines and not lines[-1][1]:
        lines.pop()
    for number, text in lines:
        if not text:
            raise DatasetError(f"{path}:{number}: empty line in {what}")
    return lines


def read_boxes(
    path: Path, what: str = "ground truth", *, allow_negative: bool = True
) -> np.ndarray:
    """``x,y,w,h`` per line (commas, tabs or spaces) -> ``[N, 4]`` float64.

    Every value must be a finite number; result files (``allow_negative=False``) must not have a
    negative width or height, which no toolkit can score.
    """
    rows = []
    for number, text in _content_lines(path, what):
        parts = _SEPARATORS.split(text.strip(", \t"))
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4 or not np.all(np.isfinite(values)):
            raise DatasetError(
                f"{path}:{number}: expected a box x,y,w,h (four finite numbers), got {text[:60]!r}"
            )
        if not allow_negative and (values[2] < 0 or values[3] < 0):
            raise DatasetError(f"{path}:{number}: negative width or height in {text[:60]!r}")
        rows.append(values)
    if not rows:
        raise DatasetError(f"{path}: {what} has no boxes")
    return np.asarray(rows, np.float64)


def read_flags(path: Path, count: int, what: str) -> np.ndarray:
    """0/1 (or small integer) labels, one per frame, on one line (LaSOT) or one per line."""
    values: list[int] = []
    for number, text in _content_lines(path, what):
        for part in _SEPARATORS.split(text.strip(", \t")):
            try:
                values.append(int(float(part)))
            except ValueError:
                raise DatasetError(f"{path}:{number}: {part[:20]!r} is not a number") from None
    if len(values) != count:
        raise DatasetError(f"{path}: {what} has {len(values)} labels for {count} frames")
    return np.asarray(values, np.int64)


def list_frames(folder: Path) -> list[Path]:
    """The frame images ``samurai-run`` reads from ``folder``, in the same (numeric) order."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: frame folder is missing")
    paths = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if all(p.stem.isdigit() for p in paths):
        return sorted(paths, key=lambda p: (int(p.stem), p.name))
    return sorted(paths, key=lambda p: p.name)


def _checked_name(name: str, where: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise DatasetError(f"{where}: {name!r} is not a sequence folder name")
    return name


def _sequence(
    name: str,
    seq_dir: Path,
    frames_dir: Path,
    gt_path: Path,
    visible: np.ndarray | None = None,
    image_size: tuple[int, int] | None = None,
    first_only_ok: bool = False,
    gt: np.ndarray | None = None,
) -> Sequence:
    frames = list_frames(frames_dir)
    if not frames:
        raise DatasetError(f"{frames_dir}: no .jpg/.png frames")
    gt = read_boxes(gt_path) if gt is None else gt
    if len(gt) != len(frames) and not (first_only_ok and len(gt) == 1):
        raise DatasetError(f"{gt_path}: {len(gt)} boxes for {len(frames)} frames in {frames_dir}")
    if gt[0, 2] <= 0 or gt[0, 3] <= 0:
        raise DatasetError(f"{gt_path}:1: the first-frame box must have a positive size")
    if visible is not None and len(visible) != len(frames):
        raise DatasetError(
            f"{seq_dir}: visibility labels for {len(visible)} of {len(frames)} frames"
        )
    return Sequence(name, frames_dir, len(frames), gt, gt_path, visible, image_size)


def _lasot_sequence(seq_dir: Path) -> Sequence:
    frames = list_frames(seq_dir / "img")
    occluded = read_flags(seq_dir / "full_occlusion.txt", len(frames), "full-occlusion labels")
    out_of_view = read_flags(seq_dir / "out_of_view.txt", len(frames), "out-of-view labels")
    visible = (occluded == 0) & (out_of_view == 0)
    return _sequence(seq_dir.name, seq_dir, seq_dir / "img", seq_dir / "groundtruth.txt", visible)


def _lasot_dirs(root: Path) -> list[Path]:
    """Sequence folders: ``<class>/<class>-<n>`` (nested) or ``<class>-<n>`` (flat)."""
    dirs = [d for d in root.iterdir() if d.is_dir() and (d / "img").is_dir()]
    for cls in root.iterdir():
        if cls.is_dir() and not (cls / "img").is_dir():
            dirs += [d for d in cls.iterdir() if d.is_dir() and (d / "img").is_dir()]
    return sorted(dirs, key=lambda d: d.name)


def load_lasot(root: Path) -> Dataset:
    dirs = {d.name: d for d in _lasot_dirs(root)}
    listing = root / "testing_set.txt"
    if listing.is_file():
        names = [_checked_name(t, f"{listing}:{n}") for n, t in _content_lines(listing, "list")]
        missing = [n for n in names if n not in dirs]
        if missing:
            raise DatasetError(f"{listing}: sequence folder {missing[0]} (img/ inside) is missing")
    else:
        names = sorted(dirs)
    return Dataset("lasot", root, [_lasot_sequence(dirs[n]) for n in names])


def _got10k_resolution(path: Path) -> tuple[int, int] | None:
    if not path.is_file():
        return None
    for number, text in enumerate(read_text(path, "meta info"), 1):
        key, _, value = text.partition(":")
        if key.strip() == "resolution":
            match = re.fullmatch(r"\(?\s*(\d+)\s*,\s*(\d+)\s*\)?", value.strip())
            if not match:
                raise DatasetError(f"{path}:{number}: resolution must be (width, height)")
            return int(match.group(1)), int(match.group(2))
    return None


def _got10k_sequence(root: Path, name: str) -> Sequence:
    seq_dir = root / name
    if not seq_dir.is_dir():
        raise DatasetError(f"{root / 'list.txt'}: sequence folder {seq_dir} is missing")
    gt_path = seq_dir / "groundtruth.txt"
    count = len(list_frames(seq_dir))
    gt = read_boxes(gt_path)
    visible = None
    if len(gt) > 1:  # labels exist for the train/val splits only
        if (seq_dir / "cover.label").is_file():  # the toolkit scores frames with cover > 0
            visible = read_flags(seq_dir / "cover.label", count, "cover labels") > 0
        elif (seq_dir / "absence.label").is_file():
            visible = read_flags(seq_dir / "absence.label", count, "absence labels") == 0
    size = _got10k_resolution(seq_dir / "meta_info.ini")
    return _sequence(name, seq_dir, seq_dir, gt_path, visible, size, first_only_ok=True, gt=gt)


def load_got10k(root: Path) -> Dataset:
    listing = root / "list.txt"
    if not listing.is_file():
        subsets = [s for s in ("val", "test", "train") if (root / s / "list.txt").is_file()]
        hint = f"; point to a subset folder, e.g. {root / subsets[0]}" if subsets else ""
        raise DatasetError(f"{listing}: GOT-10k sequence list is missing{hint}")
    names = [_checked_name(t, f"{listing}:{n}") for n, t in _content_lines(listing, "list")]
    return Dataset("got10k", root, [_got10k_sequence(root, n) for n in names])


def load_otb(root: Path) -> Dataset:
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and (d / "img").is_dir())
    return Dataset(
        "otb",
        root,
        [_sequence(d.name, d, d / "img", d / "groundtruth_rect.txt") for d in dirs],
    )


def detect_format(root: Path) -> str:
    """``got10k`` (a ``list.txt``), ``otb`` (``*/groundtruth_rect.txt``) or ``lasot``."""
    if (root / "list.txt").is_file():
        return "got10k"
    if any(root.glob("*/groundtruth_rect.txt")):
        return "otb"
    if any(root.glob("*/groundtruth.txt")) or any(root.glob("*/*/groundtruth.txt")):
        if any(root.glob("*/img")) or any(root.glob("*/*/img")):
            return "lasot"
    if any((root / s / "list.txt").is_file() for s in ("val", "test", "train")):
        raise DatasetError(f"{root}: a GOT-10k root; point to a subset folder such as {root}/val")
    raise DatasetError(
        f"{root}: not a LaSOT, GOT-10k or OTB dataset (no list.txt, */groundtruth_rect.txt or "
        "*/groundtruth.txt beside img/); pass --format if the layout is right"
    )


def load_dataset(
    root: str | Path, fmt: str = "auto", sequences: list[str] | None = None
) -> Dataset:
    """Read a dataset's sequence list and ground truth (frames are counted, not decoded)."""
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"{path}: dataset folder does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    loaders = {"lasot": load_lasot, "got10k": load_got10k, "otb": load_otb}
    if fmt not in loaders:
        raise DatasetError(f"unknown dataset format {fmt!r}; use one of auto, {', '.join(FORMATS)}")
    dataset = loaders[fmt](path)
    if not dataset.sequences:
        raise DatasetError(f"{path}: no {fmt} sequences found")
    log.info("%s: %d %s sequences", path, len(dataset.sequences), fmt)
    return dataset.select(sequences)

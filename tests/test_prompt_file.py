"""Prompt files (``samurai-run --prompts``): read as untrusted documents, and a run with one.

Reading checks every field and refuses what could hurt (huge files, masks outside the file's
folder, decompression bombs) with one line; the run reports each object from its first prompted
frame, marks (re)prompted frames in the JSONL, and writes 0,0,0,0 where an object is not tracked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import synthetic_frames

from samurai_onnx.runtime.prompts import PromptError, load_prompts


def _write(tmp_path: Path, data: Any, name: str = "prompts.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_reads_every_prompt_kind(tmp_path: Path) -> None:
    mask = np.zeros((120, 160), np.uint8)
    mask[30:60, 40:90] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    path = _write(
        tmp_path,
        {
            "prompts": [
                {"frame": 3, "object": 2, "mask": "m.png"},
                {"frame": 0, "object": 0, "box": [1, 2, 30, 40]},
                {"frame": 0, "object": 1, "points": [[10, 20], [30.5, 40]], "labels": [1, 0]},
                {"frame": 5, "object": 1, "box": [5, 5, 9, 9], "points": [[7, 7]], "labels": [0]},
                {"frame": 6, "object": 0, "remove": True},
            ]
        },
    )
    prompts = load_prompts(path)
    assert [(p.frame, p.obj_id) for p in prompts] == [(0, 0), (0, 1), (3, 2), (5, 1), (6, 0)]
    assert prompts[0].box == (1.0, 2.0, 30.0, 40.0)
    assert prompts[1].points == ((10.0, 20.0), (30.5, 40.0)) and prompts[1].labels == (1, 0)
    assert prompts[2].mask is not None and prompts[2].mask.dtype == bool
    assert int(prompts[2].mask.sum()) == 30 * 50
    assert prompts[3].box is not None and prompts[3].labels == (0,)
    assert prompts[4].remove


CASES: dict[str, tuple[Any, str]] = {
    "not_json": ("{prompts: [", "not valid JSON"),
    "nan": ('{"prompts": [{"frame": 0, "object": 0, "box": [NaN, 1, 2, 3]}]}', "NaN"),
    "top_list": ([1, 2], 'expected {"prompts"'),
    "unknown_top": ({"prompts": [], "extra": 1}, "unknown key(s) extra"),
    "empty": ({"prompts": []}, "prompts is empty"),
    "no_frame": ({"prompts": [{"object": 0, "box": [0, 0, 1, 1]}]}, "frame: missing"),
    "negative_frame": ({"prompts": [{"frame": -1, "object": 0, "box": [0, 0, 1, 1]}]}, "between 0"),
    "bool_object": ({"prompts": [{"frame": 0, "object": True, "box": [0, 0, 1, 1]}]}, "object"),
    "typo": ({"prompts": [{"frame": 0, "object": 0, "bbox": [0, 0, 1, 1]}]}, "unknown key(s) bbox"),
    "nothing": ({"prompts": [{"frame": 0, "object": 0}]}, "give a box, points"),
    "box_len": ({"prompts": [{"frame": 0, "object": 0, "box": [0, 0, 1]}]}, "[x, y, w, h]"),
    "box_area": ({"prompts": [{"frame": 0, "object": 0, "box": [0, 0, 0, 5]}]}, "w and h must be > 0"),
    "box_text": ({"prompts": [{"frame": 0, "object": 0, "box": [0, "a", 1, 1]}]}, "box[1]"),
    "labels_missing": ({"prompts": [{"frame": 0, "object": 0, "points": [[1, 1]]}]}, "labels: missing"),
    "labels_count": (
        {"prompts": [{"frame": 0, "object": 0, "points": [[1, 1]], "labels": [1, 0]}]},
        "2 label(s) for 1 point(s)",
    ),
    "label_value": (
        {"prompts": [{"frame": 0, "object": 0, "points": [[1, 1]], "labels": [2]}]},
        "labels[0]",
    ),
    "point_shape": (
        {"prompts": [{"frame": 0, "object": 0, "points": [[1, 1, 1]], "labels": [1]}]},
        "points[0]: expected [x, y]",
    ),
    "twice": (
        {"prompts": [{"frame": 0, "object": 0, "box": [0, 0, 1, 1]}] * 2},
        "second prompt for object 0 on frame 0",
    ),
    "remove_with_box": (
        {"prompts": [{"frame": 0, "object": 0, "remove": True, "box": [0, 0, 1, 1]}]},
        "give no box",
    ),
    "mask_and_box": (
        {"prompts": [{"frame": 0, "object": 0, "mask": "m.png", "box": [0, 0, 1, 1]}]},
        "stands alone",
    ),
    "mask_escape": ({"prompts": [{"frame": 0, "object": 0, "mask": "../m.png"}]}, "outside"),
    "mask_absolute": ({"prompts": [{"frame": 0, "object": 0, "mask": "/etc/passwd"}]}, "outside"),
    "mask_missing": ({"prompts": [{"frame": 0, "object": 0, "mask": "none.png"}]}, "cannot read"),
    "mask_not_png": ({"prompts": [{"frame": 0, "object": 0, "mask": "m.txt"}]}, "not a .png"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_prompt_files(case: str, tmp_path: Path) -> None:
    data, needle = CASES[case]
    (tmp_path / "m.txt").write_text("not an image")
    path = _write(tmp_path, data)
    with pytest.raises(PromptError, match=re.escape(needle)) as info:
        load_prompts(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message


def test_huge_and_bomb_files(tmp_path: Path) -> None:
    big = _write(tmp_path, '{"prompts": [' + "1," * 600_000 + "1]}")
    with pytest.raises(PromptError, match="refused unread"):
        load_prompts(big)
    # a PNG that declares 30000 x 30000 pixels: a few KB on disk, 900 MB decoded
    bomb = np.zeros((30000, 30000), np.uint8)
    ok, buf = cv2.imencode(".png", bomb, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok and len(buf) < 2_000_000
    (tmp_path / "bomb.png").write_bytes(buf.tobytes())
    path = _write(tmp_path, {"prompts": [{"frame": 0, "object": 0, "mask": "bomb.png"}]})
    with pytest.raises(PromptError, match="megapixels"):
        load_prompts(path)


@pytest.mark.slow
def test_samurai_run_with_a_prompt_file(tiny256_bundle: Path, tmp_path: Path) -> None:
    """Object 0 from a --bbox; object 1 starts on frame 1 from a click; object 0 is removed on
    frame 2; object 2 starts on frame 2 from a mask PNG (4 small frames)."""
    from samurai_onnx.runtime.cli import execute

    frames = synthetic_frames(4, 160, 120)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    mask = (frames[2].min(axis=2) > 200).astype(np.uint8) * 255  # the white box on frame 2
    cv2.imwrite(str(tmp_path / "box.png"), mask)
    prompts = _write(
        tmp_path,
        {
            "prompts": [
                {"frame": 1, "object": 1, "points": [[110, 83]], "labels": [1]},
                {"frame": 2, "object": 0, "remove": True},
                {"frame": 2, "object": 2, "mask": "box.png"},
            ]
        },
    )
    out = tmp_path / "out"
    code = execute(
        tiny256_bundle,
        str(folder),
        ["33,40,30,23"],
        prompts_file=prompts,
        boxes_out=out / "boxes.txt",
        jsonl=out / "run.jsonl",
        progress=False,
        echo=lambda _: None,
    )
    assert code == 0
    lines = [json.loads(x) for x in (out / "run.jsonl").read_text().splitlines()]
    ids = [[o["id"] for o in line["objects"]] for line in lines]
    assert ids == [[0], [0, 1], [1, 2], [1, 2]]
    prompted = [[o["id"] for o in line["objects"] if o["prompted"]] for line in lines]
    assert prompted == [[0], [1], [2], []]
    boxes = {k: (out / f"boxes_obj{k}.txt").read_text().splitlines() for k in (0, 1, 2)}
    assert all(len(v) == 4 for v in boxes.values())
    assert boxes[1][0] == "0,0,0,0" and boxes[2][:2] == ["0,0,0,0", "0,0,0,0"]
    assert boxes[0][2:] == ["0,0,0,0", "0,0,0,0"]  # removed
    # a prompt file that is also named as an output is refused before anything is written
    refused = execute(
        tiny256_bundle,
        str(folder),
        None,
        prompts_file=prompts,
        jsonl=prompts,
        progress=False,
        echo=lambda _: None,
    )
    assert refused == 2 and json.loads(prompts.read_text())["prompts"][0]["frame"] == 1

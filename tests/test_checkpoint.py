"""Checkpoint errors: every way an official-format file can be wrong is one line that names the
file and the fix, from ``read_state_dict``/``compile_bundle`` and from ``samurai-compile`` (exit 2,
``error: ...`` on stderr, no traceback); and the download path (progress, sha256, atomic rename).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, make_random_checkpoint, requires_oracle
from typer.testing import CliRunner

from samurai_onnx.compiler.build import compile_bundle
from samurai_onnx.compiler.checkpoint import (
    CheckpointError,
    cache_dir,
    read_state_dict,
    resolve_checkpoint,
)
from samurai_onnx.compiler.cli import app
from samurai_onnx.compiler.manifest import CheckpointSpec, load_model_manifest

TINY = REPO / "manifests" / "tiny.yaml"
TINY_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"


class _Evil:
    """Unpickling this would create a directory: weights_only=True must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _one_line_error(message: str, *needles: str) -> None:
    assert "\n" not in message.strip(), message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def _cli(args: list[str]) -> Any:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: "), err
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == 1, err
    return err


# -- files that are not (this) SAM 2 checkpoint ---------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    files = {}
    files["truncated"] = root / "truncated.pt"
    with open(tiny_checkpoint, "rb") as src:
        files["truncated"].write_bytes(src.read(1_300_000))  # head -c 1300000
    files["not_sam2"] = root / "not_sam2.pt"
    torch.save({"model": {"foo": torch.zeros(1)}}, files["not_sam2"])
    files["tensor"] = root / "tensor.pt"
    torch.save(torch.zeros(3), files["tensor"])
    files["text"] = root / "notes.txt"
    files["text"].write_text("these are not the weights you are looking for\n")
    files["empty"] = root / "empty.pt"
    files["empty"].write_bytes(b"")
    files["pickle_object"] = root / "evil.pt"
    torch.save({"model": {}, "x": _Evil(root / "pwned")}, files["pickle_object"])
    files["plain_pickle"] = root / "plain.pkl"
    files["plain_pickle"].write_bytes(pickle.dumps({"model": {}}))
    return files


BAD_CASES = {
    "truncated": ("truncated", "download it again", TINY_URL),
    "not_sam2": ("not a SAM 2 checkpoint", "sam2.1_hiera_tiny.pt"),
    "tensor": ("not a SAM 2 checkpoint", "no 'model' state dict"),
    "text": ("not a readable torch checkpoint", "download it again"),
    "empty": ("not a readable torch checkpoint", "0 bytes"),
    "pickle_object": ("Python objects", "weights_only=True", "refused"),
    "plain_pickle": ("not a readable torch checkpoint",),
}


@requires_oracle
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_file_is_one_line_error(bad_files: dict[str, Path], case: str) -> None:
    path = bad_files[case]
    manifest = load_model_manifest(TINY)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path, manifest)
    _one_line_error(str(info.value), str(path), *BAD_CASES[case])
    assert not (path.parent / "pwned").exists()  # nothing in the pickle ran


@requires_oracle
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_cli_bad_checkpoint_exits_2(bad_files: dict[str, Path], case: str, tmp_path: Path) -> None:
    err = _cli([TINY, "--checkpoint", bad_files[case], "--out", tmp_path / "b"])
    _one_line_error(err, str(bad_files[case]), *BAD_CASES[case])
    assert not (tmp_path / "b" / "bundle.yaml").exists()


@requires_oracle
def test_cli_subprocess_no_traceback(bad_files: dict[str, Path], tmp_path: Path) -> None:
    """The real entry point (a separate process): exit 2, one ``error:`` line, no traceback."""
    cmd = [sys.executable, "-m", "samurai_onnx.compiler.cli", str(TINY)]
    cmd += ["--checkpoint", str(bad_files["truncated"]), "--out", str(tmp_path / "b")]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "truncated" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "sam2.1_hiera_tiny.pt"
    manifest = load_model_manifest(TINY)
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(manifest.checkpoint, missing)
    _one_line_error(str(info.value), str(missing), "does not exist", "--checkpoint")
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(manifest.checkpoint, tmp_path)
    _one_line_error(str(info.value), str(tmp_path), "is a directory")
    err = _cli([TINY, "--checkpoint", missing, "--out", tmp_path / "b"])
    _one_line_error(err, str(missing), "does not exist")


@requires_oracle
@pytest.mark.slow
def test_other_model_size(tmp_path: Path) -> None:
    small = make_random_checkpoint(tmp_path / "sam2.1_hiera_small.pt", size="small")
    with pytest.raises(CheckpointError) as info:
        read_state_dict(small, load_model_manifest(TINY))
    _one_line_error(str(info.value), str(small), "small", "manifests/small.yaml")
    err = _cli([TINY, "--checkpoint", small, "--out", tmp_path / "b"])
    _one_line_error(err, str(small), "SAM 2.1 small", "tiny", "use manifests/small.yaml")


@requires_oracle
def test_manifest_sha256_mismatch(tiny_checkpoint: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "tiny.yaml"
    text = TINY.read_text().replace("sha256: null", "sha256: " + "ab" * 32)
    manifest.write_text(text)
    with pytest.raises(CheckpointError) as info:
        compile_bundle(manifest, "cpu", checkpoint=tiny_checkpoint, out_dir=tmp_path / "b")
    _one_line_error(str(info.value), str(tiny_checkpoint), "sha256", "ab" * 32, TINY_URL)
    err = _cli([manifest, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "b"])
    _one_line_error(err, str(tiny_checkpoint), "ab" * 32)
    assert not (tmp_path / "b" / "bundle.yaml").exists()


# -- no checkpoint given: the cache, else a download ---------------------------------------------


def _offline(*args: Any, **kwargs: Any) -> Any:
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_offline_no_cache_names_url_and_cache_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAMURAI_ONNX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    expected = tmp_path / "cache" / "checkpoints" / "sam2.1_hiera_tiny.pt"
    assert cache_dir() / "sam2.1_hiera_tiny.pt" == expected
    with pytest.raises(CheckpointError) as info:
        compile_bundle(TINY, "cpu", out_dir=tmp_path / "b")
    _one_line_error(str(info.value), TINY_URL, str(expected), "--checkpoint")
    err = _cli([TINY, "--out", tmp_path / "b"])
    _one_line_error(err, TINY_URL, str(expected))
    assert not expected.exists() and not expected.with_name(expected.name + ".part").exists()
    # --no-download: the same instructions, without trying
    err = _cli([TINY, "--out", tmp_path / "b", "--no-download"])
    _one_line_error(err, TINY_URL, str(expected), "not in the cache")


class _FakeResponse:
    def __init__(self, data: bytes, length: int | None, check: Any = None, fail_at: int = -1):
        self._buf = io.BytesIO(data)
        self.headers = {"Content-Length": str(length)} if length is not None else {}
        self.reads = 0
        self._check = check
        self._fail_at = fail_at

    def read(self, n: int = -1) -> bytes:
        if self._check:
            self._check()
        self.reads += 1
        if self.reads == self._fail_at:
            raise ConnectionResetError(104, "Connection reset by peer")
        return self._buf.read(n)

    def __enter__(self) -> _FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


FAKE = bytes(range(256)) * 12_000  # ~3 MB: several 1 MiB chunks


def _spec(sha: str | None) -> CheckpointSpec:
    return CheckpointSpec(file="fake.pt", url="https://example.invalid/fake.pt", sha256=sha)


def test_download_progress_sha_and_atomic_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SAMURAI_ONNX_CACHE", str(tmp_path))
    dest = tmp_path / "checkpoints" / "fake.pt"
    part = dest.with_name("fake.pt.part")

    def during() -> None:  # while downloading, only the .part file exists
        assert not dest.exists()

    resp = _FakeResponse(FAKE, len(FAKE), during)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: resp)
    got = resolve_checkpoint(_spec(hashlib.sha256(FAKE).hexdigest()))
    assert got == dest and dest.read_bytes() == FAKE
    assert not part.exists()
    assert resp.reads >= 3
    err = capsys.readouterr().err
    assert "download fake.pt" in err and "100%" in err
    # the cached file is used from now on, with no network
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    assert resolve_checkpoint(_spec(hashlib.sha256(FAKE).hexdigest())) == dest


@pytest.mark.parametrize("failure", ["sha256", "short", "reset"])
def test_failed_download_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    monkeypatch.setenv("SAMURAI_ONNX_CACHE", str(tmp_path))
    dest = tmp_path / "checkpoints" / "fake.pt"
    sha = hashlib.sha256(FAKE).hexdigest()
    if failure == "sha256":
        resp, spec, needle = _FakeResponse(FAKE, len(FAKE)), _spec("0" * 64), "sha256"
    elif failure == "short":
        resp, spec, needle = _FakeResponse(FAKE[:1000], len(FAKE)), _spec(None), "stopped after"
    else:
        resp, spec, needle = _FakeResponse(FAKE, len(FAKE), fail_at=2), _spec(sha), "reset"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: resp)
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(spec)
    _one_line_error(str(info.value), spec.url, str(dest), needle)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the .part file was deleted


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAMURAI_ONNX_CACHE", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "samurai-onnx" / "checkpoints"


@requires_oracle
def test_good_checkpoint_loads(tiny_checkpoint: Path) -> None:
    state = read_state_dict(tiny_checkpoint, load_model_manifest(TINY))
    assert "image_encoder.trunk.patch_embed.proj.weight" in state


def test_random_weights_do_not_depend_on_the_cpu() -> None:
    """The seeded random weights are the same numbers under every CPU capability of PyTorch's
    kernels (torch.randn's were not: default and avx2 differed by up to 1.9e-6), so a random
    checkpoint, and every number measured on it, is the same on every machine."""
    code = (
        "import hashlib, torch\n"
        "from samurai_onnx.compiler.checkpoint import randomize_state_dict\n"
        "t = {'a.weight': torch.zeros(64, 300), 'a.bias': torch.zeros(300), 'n.weight': torch.zeros(999)}\n"
        "out = randomize_state_dict(t, seed=3)\n"
        "print(hashlib.sha256(b''.join(out[k].numpy().tobytes() for k in sorted(out))).hexdigest())\n"
    )
    digests = set()
    for capability in ("default", "avx2"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(run.stdout.strip())
    assert len(digests) == 1

"""Untrusted documents: read them safely, check every field, report a problem in one short line.

Model manifests, target manifests, ``bundle.yaml`` and (later) prompt files all come from users or
from other machines, so each of them is treated as hostile input. This module is the one place
that reads them and the one place that formats what is wrong with them:

- ``load_yaml`` / ``load_json`` refuse a file over ``MAX_DOCUMENT_BYTES`` before parsing it, and
  YAML anchors and aliases (``&a`` / ``*a``: a 4 KB "billion laughs" document expands to gigabytes
  once something walks it) and nesting deeper than ``MAX_DEPTH`` while parsing it;
- ``short`` quotes a value in at most ``MAX_VALUE_CHARS`` characters without ever walking more of
  it than it prints (``repr`` of a shared structure would expand it), and ``one_line`` turns any
  exception (a YAML error with its caret drawing included) into one bounded line;
- ``check_fields`` / ``check_instance`` check a mapping against a frozen dataclass: the type of
  each field's default, the arity of fixed tuples, and the ``Range`` rules the class lists in
  ``FIELD_RULES``, so a manifest, a ``bundle.yaml`` and an API override all pass one rule set.

It imports neither torch nor onnx (the runtime imports it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_DOCUMENT_BYTES = 1 << 20  # 1 MiB: bundle.yaml is ~7 KB, a manifest ~4 KB
MAX_DEPTH = 32  # nesting of mappings/lists; the deepest real document has 5 levels
MAX_VALUE_CHARS = 60  # a value quoted in a message
MAX_MESSAGE_CHARS = 600  # a whole error line
MAX_THREADS = 1024

ErrorType = Callable[[str], Exception]


class DocumentError(ValueError):
    """An untrusted document (or setting) that cannot be used; one line naming it and the fix.

    ``BundleError`` and ``ManifestError`` derive from it, so callers may catch either the
    specific error or every document problem at once.
    """


# -- messages ------------------------------------------------------------------------------------


def short(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """``repr``-like text of ``value``, at most ``limit`` characters, in O(limit) work.

    Why not ``repr``: a YAML document with aliases is a graph whose ``repr`` is exponentially long
    (a 4 KB file printed as a 2 GB line), and Python refuses to print ints over 4300 digits. This
    walks containers only until ``limit`` characters are produced and truncates strings first.
    """
    parts: list[str] = []
    budget = [limit + 4]

    def emit(text: str) -> None:
        parts.append(text)
        budget[0] -= len(text)

    def walk(v: Any) -> None:
        if budget[0] <= 0:
            return
        if v is None or isinstance(v, bool):
            emit(repr(v))
        elif isinstance(v, int):
            emit(repr(v) if v.bit_length() < 200 else f"<int of {v.bit_length()} bits>")
        elif isinstance(v, float):
            emit(repr(v))
        elif isinstance(v, str):
            emit(repr(v[: limit + 1]))
        elif isinstance(v, (bytes, bytearray)):
            emit(repr(bytes(v[: limit + 1])))
        elif isinstance(v, Mapping):
            emit("{")
            for i, (k, x) in enumerate(v.items()):
                if budget[0] <= 0:
                    break
                if i:
                    emit(", ")
                walk(k)
                emit(": ")
                walk(x)
            emit("}")
        elif isinstance(v, (list, tuple, set, frozenset)):
            opening, closing = ("(", ")") if isinstance(v, tuple) else ("[", "]")
            emit(opening)
            for i, x in enumerate(v):
                if budget[0] <= 0:
                    break
                if i:
                    emit(", ")
                walk(x)
            emit(closing)
        else:
            emit(f"<{type(v).__name__}>")

    walk(value)
    text = "".join(parts)
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


def one_line(problem: BaseException | str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """An exception's message (or a text) as one line of at most ``limit`` characters.

    YAML errors (several lines with a caret drawing) become "problem at line L, column C"; any
    other message has its line breaks folded. The CLIs print errors only through this, so an
    error is always exactly one ``error:`` line.
    """
    if isinstance(problem, BaseException):
        mark = getattr(problem, "problem_mark", None)
        text = getattr(problem, "problem", None) if isinstance(problem, yaml.YAMLError) else None
        if text:
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            text = f"{text}{where}"
        else:
            text = str(problem)
        text = text or type(problem).__name__
    else:
        text = problem
    text = " ".join(text[: limit * 4].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def key_text(key: Any) -> str:
    """A mapping key as written in a message: bare when it looks like a key (``kf_weight``),
    else quoted and shortened like any other value (it may hold line breaks)."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return key
    return short(key, 30)


_PLAIN_KEY = re.compile(r"[\w.+\-]{1,40}")


def at(where: str, key: str) -> str:
    """The location of ``key`` inside ``where``: ``file`` -> ``file: key``; ``file: a`` -> ``file: a.key``."""
    return f"{where}.{key}" if ": " in where else f"{where}: {key}"


# -- reading -------------------------------------------------------------------------------------


def read_text(
    path: Path, *, error: ErrorType = DocumentError, max_bytes: int = MAX_DOCUMENT_BYTES
) -> str:
    """The UTF-8 text of ``path``, refused (before reading it all) when over ``max_bytes``."""
    data = read_bytes(path, error=error, max_bytes=max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 or use the original file"
        ) from None


def read_bytes(
    path: Path, *, error: ErrorType = DocumentError, max_bytes: int = MAX_DOCUMENT_BYTES
) -> bytes:
    """The bytes of ``path``: at most ``max_bytes`` of them, else a one-line error."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except IsADirectoryError:
        raise error(f"{path} is a folder, not a file; give the file") from None
    except OSError as exc:
        raise error(f"cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    if len(data) > max_bytes:
        raise error(
            f"{path}: larger than {max_bytes // 1024} KiB, far more than such a document needs; "
            "it is refused unread (check that it is the right file)"
        )
    return data


def write_digest(path: Path) -> Path:
    """Write ``<path>.sha256`` in ``sha256sum`` format (``sha256sum -c`` checks it too): the one
    line that covers a document, ready to be signed; returns the digest file."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.write_text(f"{digest}  {path.name}\n", encoding="ascii")
    return sidecar


def read_verified(
    path: Path, *, error: ErrorType = DocumentError, max_bytes: int = MAX_DOCUMENT_BYTES, fix: str
) -> bytes:
    """The bytes of ``path`` once they match the digest in ``<path>.sha256`` (``write_digest``);
    ``fix`` (what to do) ends every message."""
    data = read_bytes(path, error=error, max_bytes=max_bytes)
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        raise error(f"{path}: its digest {sidecar.name} is missing, so it cannot be checked; {fix}")
    recorded = read_bytes(sidecar, error=error, max_bytes=4096).decode("ascii", "replace").split()
    token = recorded[0] if recorded else ""
    if not _SHA256.fullmatch(token):
        raise error(f"{sidecar}: expected a sha256 (64 hex digits), got {short(token)}; {fix}")
    if hashlib.sha256(data).hexdigest() != token.lower():
        raise error(
            f"{path}: does not match its digest in {sidecar.name} (modified or corrupted); {fix}"
        )
    return data


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class _RefusedNode(yaml.composer.ComposerError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors, aliases and deep nesting while composing.

    Refusing at the event level means a document is never expanded at all: the first ``&``,
    ``*`` or the 33rd level stops the parser before anything is built from it.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _RefusedNode(
                None, None, "anchors and aliases (&name, *name) are not allowed", event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _RefusedNode(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated objects out in full: what we write must be readable by ``_StrictLoader``."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any) -> str:
    """YAML text of plain data, keys in the given order, never with anchors or aliases."""
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False)


def parse_yaml(text: str, *, where: str, error: ErrorType = DocumentError) -> Any:
    """Plain data (dicts, lists, scalars) from YAML text, or a one-line "not valid YAML" error."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML: {one_line(exc)}") from None
    except RecursionError:
        raise error(f"{where}: not valid YAML: nested too deeply") from None


def load_yaml(
    path: Path, *, error: ErrorType = DocumentError, max_bytes: int = MAX_DOCUMENT_BYTES
) -> Any:
    """``read_text`` + ``parse_yaml``: the one way an untrusted YAML file is read."""
    return parse_yaml(
        read_text(path, error=error, max_bytes=max_bytes), where=str(path), error=error
    )


def parse_json(text: str, *, where: str, error: ErrorType = DocumentError) -> Any:
    """Plain data from JSON text: no NaN/Infinity, nesting up to ``MAX_DEPTH``, one-line errors."""

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number; write null or a finite number")

    try:
        data = json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise error(
            f"{where}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise error(f"{where}: not valid JSON: {one_line(exc, 200)}") from None
    if _depth(data) > MAX_DEPTH:
        raise error(f"{where}: not valid JSON: nested deeper than {MAX_DEPTH} levels")
    return data


def load_json(
    path: Path, *, error: ErrorType = DocumentError, max_bytes: int = MAX_DOCUMENT_BYTES
) -> Any:
    """``read_text`` + ``parse_json``: the one way an untrusted JSON file is read."""
    return parse_json(
        read_text(path, error=error, max_bytes=max_bytes), where=str(path), error=error
    )


def _depth(value: Any) -> int:
    """Nesting depth of plain data (iterative: deep JSON must not overflow the stack here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children: Iterable[Any] = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((c, d + 1) for c in children)
    return deepest


def to_json_value(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN/Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return value


# -- types and ranges ----------------------------------------------------------------------------


def kind_ok(value: Any, kind: type | tuple[type, ...]) -> bool:
    """``isinstance`` where YAML's true/false are not numbers and ints count as floats."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def kind_name(kind: type | tuple[type, ...]) -> str:
    return kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)


def require(
    data: Mapping[str, Any],
    key: str,
    where: str,
    kind: type | tuple[type, ...],
    *,
    error: ErrorType = DocumentError,
) -> Any:
    """``data[key]``, which must be present and of ``kind``."""
    if key not in data:
        raise error(f"{at(where, key)}: missing (required)")
    value = data[key]
    if not kind_ok(value, kind):
        raise error(f"{at(where, key)}: expected {kind_name(kind)}, got {short(value)}")
    return value


def choice(
    value: Any, allowed: Iterable[str], where: str, *, error: ErrorType = DocumentError
) -> str:
    """``value`` if it is one of ``allowed`` (strings), else a one-line error listing them."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise error(f"{where}: {short(value)} is not one of {', '.join(allowed)}")
    return value


def unknown_keys(
    data: Mapping[Any, Any], allowed: Iterable[str], where: str, *, error: ErrorType = DocumentError
) -> None:
    """Refuse keys outside ``allowed`` (a typo must not become a silently ignored setting)."""
    allowed = set(allowed)
    extra = sorted((k for k in data if k not in allowed), key=str)
    if extra:
        names = ", ".join(key_text(k) for k in extra[:5])
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise error(f"{where}: unknown key(s) {names}{more}; allowed: {', '.join(sorted(allowed))}")


@dataclass(frozen=True)
class Range:
    """The values a numeric field (or each item of a numeric tuple field) may take."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded
    multiple_of: int | None = None
    why: str = ""  # said after the rule: "(the Hiera trunk's total stride)"

    def ok(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and value > self.hi:
            return False
        return not (self.multiple_of and value % self.multiple_of)

    def describe(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"

        parts = []
        if self.multiple_of:
            parts.append(f"a multiple of {self.multiple_of}")
        if self.lo is not None and self.hi is not None and not self.lo_open:
            parts.append(f"between {num(self.lo)} and {num(self.hi)}")
        else:
            if self.lo is not None:
                parts.append(f"{'greater than' if self.lo_open else 'at least'} {num(self.lo)}")
            if self.hi is not None:
                parts.append(f"at most {num(self.hi)}")
        text = " and ".join(parts) if parts else "a finite number"
        return f"{text} {self.why}".rstrip()

    def check(self, value: float, where: str, error: ErrorType = DocumentError) -> None:
        if not self.ok(value):
            raise error(f"{where}: {short(value)} is out of range; it must be {self.describe()}")


FINITE = Range()


def check_fields(
    cls: Any, data: Mapping[str, Any], where: str, *, error: ErrorType = DocumentError
) -> dict[str, Any]:
    """``data`` checked against the fields of dataclass ``cls``; returns constructor kwargs.

    Why: YAML happily reads ``kf_score_weight: "0.25"`` or ``stages: [1, 2]`` and a dataclass
    takes anything, so a typo would otherwise become a silently different model or tracker. The
    type of each field's default is the rule (bool, int, float (ints allowed), str, tuples of
    those; a tuple annotated with a fixed arity must have that length), then the class's
    ``FIELD_RULES`` (``{field: Range}``, applied to each item of a tuple; every float must be
    finite). Fields whose default is a dataclass are left to the caller. Lists become tuples,
    ints given for floats become floats.
    """
    if not isinstance(data, Mapping):
        raise error(f"{where}: expected a mapping, got {short(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown_keys(data, fields, where, error=error)
    rules: Mapping[str, Range] = getattr(cls, "FIELD_RULES", {})
    out: dict[str, Any] = {}
    for key, value in data.items():
        default = _default(fields[key])
        here = f"{where}.{key}"
        rule = rules.get(key)
        if dataclasses.is_dataclass(default):
            out[key] = value
            continue
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise error(f"{here}: expected a list, got {short(value)}")
            fixed = "..." not in str(fields[key].type)
            if fixed and len(value) != len(default):
                raise error(f"{here}: expected a list of {len(default)}, got {short(value)}")
            if len(value) > 256:
                raise error(f"{here}: expected a short list, got {len(value)} items")
            kind = type(default[0]) if default else object
            if not all(kind_ok(v, kind) for v in value):
                raise error(f"{here}: expected a list of {kind.__name__}, got {short(value)}")
            items = tuple(float(v) if kind is float else v for v in value)
            for i, v in enumerate(items):
                _check_number(v, rule, f"{here}[{i}]", error)
            out[key] = items
            continue
        if not kind_ok(value, type(default)):
            raise error(f"{here}: expected {type(default).__name__}, got {short(value)}")
        value = float(value) if isinstance(default, float) else value
        _check_number(value, rule, here, error)
        out[key] = value
    return out


def _default(f: dataclasses.Field[Any]) -> Any:
    """A field's default without constructing the class (whose ``__post_init__`` may check)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default; check_fields needs one to know its type")


def _check_number(value: Any, rule: Range | None, where: str, error: ErrorType) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    (rule or FINITE).check(value, where, error)


def check_instance(obj: Any, where: str, *, error: ErrorType = DocumentError) -> None:
    """``check_fields`` applied to a constructed dataclass (for ``__post_init__``): an object
    built in code (an API override, ``dataclasses.replace``) passes the rules a document does."""
    values = {
        f.name: getattr(obj, f.name)
        for f in dataclasses.fields(obj)
        if not dataclasses.is_dataclass(getattr(obj, f.name))
    }
    check_fields(type(obj), values, where, error=error)


def check_threads(
    threads: Any, name: str = "threads", *, error: ErrorType = DocumentError
) -> int | None:
    """ONNX Runtime's intra-op thread count: None (its default) or 1..``MAX_THREADS``."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise error(f"{name} is {short(threads)}; give a whole number of threads (or none)")
    if not 1 <= threads <= MAX_THREADS:
        raise error(
            f"{name} is {threads}; it must be at least 1 (and at most {MAX_THREADS}); leave it "
            "out for ONNX Runtime's default (all cores)"
        )
    return threads

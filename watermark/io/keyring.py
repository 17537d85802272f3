"""Keyrings: many keys in one JSON file (written like a key file: atomically, mode 0600), and
loading keys from key files, keyring files and folders of them.

A keyring is ``{"format": "ringmark-keyring", "version": 1, "keys": [<key file fields>, ...]}``.
Adding a key refuses one too close to a key already there (``detection.nearest``): an image
carrying either would show part of the other's statistic.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..scheme.detection import nearest
from ..scheme.keys import FORMAT as KEY_FORMAT
from ..scheme.keys import Key, KeyFileError
from .keyfile import key_from_doc, load_key, read_json, write_secret

FORMAT = "ringmark-keyring"
VERSION = 1
MAX_SIMILARITY = 0.2  # |cos| above which a new key collides: on 480 dof, random keys pass 0.2 with p ~ 1e-5


def is_keyring(doc: object) -> bool:
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def load_keyring(path: str | os.PathLike, strict: bool = True) -> tuple[list[Key], list[str]]:
    """The keys of a keyring file, and a one-line problem per entry that is not a valid key
    (``strict``: the first such problem raises KeyFileError instead)."""
    path = Path(path)
    doc = read_json(path, "keyring")
    if not is_keyring(doc):
        raise KeyFileError(f"{path}: not a ringmark keyring")
    if doc.get("version") != VERSION or not isinstance(doc.get("keys"), list):
        raise KeyFileError(f"{path}: keyring version {doc.get('version')!r} is not supported (expected {VERSION})")
    keys, problems = [], []
    for i, entry in enumerate(doc["keys"]):
        try:
            keys.append(key_from_doc(entry))
        except KeyFileError as e:
            if strict:
                raise KeyFileError(f"{path}: key {i}: {e}") from None
            problems.append(f"{path}: key {i}: {e}")
    return keys, problems


def load_keys(sources: list[str | os.PathLike | Key]) -> tuple[list[Key], list[str]]:
    """Keys from ``sources``: Key objects, key files, keyring files and folders of them (``*.json``,
    recursively). A key file named directly must be valid (KeyFileError otherwise); in a folder or a
    keyring, a bad file or entry becomes a one-line problem and the others are used. Duplicates
    (same key id) are kept once."""
    keys: dict[str, Key] = {}
    problems: list[str] = []
    for source in sources:
        if isinstance(source, Key):
            keys.setdefault(source.key_id, source)
            continue
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.json") if p.is_file())
            if not files:
                problems.append(f"{path}: no .json key or keyring files in this folder")
            for f in files:
                try:
                    found, bad = _load_file(f, strict=False)
                except KeyFileError as e:
                    problems.append(str(e))
                    continue
                problems += bad
                for k in found:
                    keys.setdefault(k.key_id, k)
        else:
            found, bad = _load_file(path, strict=False)
            problems += bad
            for k in found:
                keys.setdefault(k.key_id, k)
    if not keys:
        raise KeyFileError(problems[0] if len(problems) == 1 else "no valid key among the inputs"
                           + (f" ({len(problems)} problems, first: {problems[0]})" if problems else ""))
    return list(keys.values()), problems


def _load_file(path: Path, strict: bool) -> tuple[list[Key], list[str]]:
    doc = read_json(path)
    if is_keyring(doc):
        return load_keyring(path, strict)
    if isinstance(doc, dict) and doc.get("format") == KEY_FORMAT:
        return [load_key(path)], []
    raise KeyFileError(f"{path}: not a ringmark key or keyring file")


def check_collision(key: Key, keys: list[Key], max_similarity: float = MAX_SIMILARITY) -> None:
    """Raise KeyFileError if ``key`` is a key of ``keys`` or too similar to one."""
    if not keys:
        return
    similarity, other = nearest(key, keys)
    if other.key_id == key.key_id:
        raise KeyFileError(f"key {key.key_id} is already in the keyring")
    if similarity > max_similarity:
        raise KeyFileError(f"the new key is too close to key {other.key_id} of the keyring (|cos| {similarity:.2f} "
                           f"> {max_similarity}): an image carrying one would show the other")


def save_keyring(keys: list[Key], path: str | os.PathLike, force: bool = False) -> None:
    docs = [{"format": KEY_FORMAT, **k._fields(), "key_id": k.key_id} for k in keys]
    write_secret({"format": FORMAT, "version": VERSION, "keys": docs}, path, force)


@contextlib.contextmanager
def locked(folder: Path):
    """An exclusive lock on ``folder`` (flock on the folder itself: no lock file is left behind),
    held by one process or thread at a time."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise KeyFileError(f"{folder}: cannot open the keyring's folder ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def add_to_keyring(key: Key, path: str | os.PathLike, max_similarity: float = MAX_SIMILARITY) -> int:
    """Append ``key`` to the keyring at ``path`` (created if missing) after the collision check;
    return the number of keys now in it. The file is rewritten atomically, the others kept; the
    read, check and write happen under a lock, so concurrent additions are not lost."""
    path = Path(path)
    with locked(path.parent):
        keys = load_keyring(path)[0] if path.exists() else []
        check_collision(key, keys, max_similarity)
        save_keyring(keys + [key], path, force=path.exists())
    return len(keys) + 1

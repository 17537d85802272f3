"""Key files: JSON holding the key's fields and its secret seed, written atomically with
owner-only permissions, never over an existing file unless asked to, and validated on reading."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..scheme.keys import FORMAT, VERSIONS, Key, KeyFileError, validate


def check_writable(path: str | os.PathLike, force: bool = False) -> None:
    """Raise KeyFileError unless a key can be written to ``path``: checked before any model loads."""
    path = Path(path)
    if path.is_dir():
        raise KeyFileError(f"{path}: is a directory")
    if path.exists() and not force:
        raise KeyFileError(f"{path}: exists; use --force to overwrite it")
    if not path.parent.is_dir():
        raise KeyFileError(f"{path}: folder {str(path.parent)!r} does not exist")


def save_key(key: Key, path: str | os.PathLike, force: bool = False) -> None:
    """Write atomically, mode 0600; an existing file is replaced only with ``force``."""
    write_secret({"format": FORMAT, **key._fields(), "key_id": key.key_id}, path, force)


def write_secret(doc: dict, path: str | os.PathLike, force: bool = False) -> None:
    """Write ``doc`` as JSON atomically, mode 0600; an existing file is replaced only with ``force``."""
    path = Path(path)
    check_writable(path, force)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ringmark-key-", dir=path.parent)
    except OSError as e:
        raise KeyFileError(f"{path}: cannot write key ({e.strerror})") from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the path appeared meanwhile: no silent overwrite
            os.unlink(tmp)
    except FileExistsError:
        os.unlink(tmp)
        raise KeyFileError(f"{path}: exists; use --force to overwrite it") from None
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise KeyFileError(f"{path}: cannot write key ({e.strerror})") from None


COMMON = {"format": str, "version": int, "pattern": str, "radius": int, "seed": int, "model": str,
          "latent_shape": list, "key_id": str}
FIELDS = {2: {**COMMON, "channel": int}, 3: {**COMMON, "channels": list}}


def read_json(path: Path, what: str = "key") -> object:
    """The JSON in ``path``, or a one-line KeyFileError."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: cannot read {what} ({getattr(e, 'strerror', None) or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise KeyFileError(f"{path}: not a {what} file (not JSON)") from None


def load_key(path: str | os.PathLike) -> Key:
    """Read and validate a key file; a tampered, foreign or malformed file is refused."""
    path = Path(path)
    try:
        return key_from_doc(read_json(path))
    except KeyFileError as e:
        raise KeyFileError(f"{path}: {e}") from None


def key_from_doc(doc: object) -> Key:
    """A key from its JSON fields (version 2 or 3), validated; KeyFileError says what is wrong."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise KeyFileError("not a ringmark key file")
    if doc.get("version") not in VERSIONS:
        raise KeyFileError(f"key format version {doc.get('version')!r} is not supported (expected one of {VERSIONS})")
    fields = FIELDS[doc["version"]]
    if set(doc) != set(fields):
        extra, missing = sorted(set(doc) - set(fields)), sorted(set(fields) - set(doc))
        raise KeyFileError(f"bad key fields (unexpected {extra}, missing {missing})")
    for name, kind in fields.items():
        if not isinstance(doc[name], kind) or isinstance(doc[name], bool):
            raise KeyFileError(f"field {name!r} must be {kind.__name__}")
    shape = doc["latent_shape"]
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise KeyFileError("field 'latent_shape' must be three positive integers")
    channels = [doc["channel"]] if doc["version"] == 2 else doc["channels"]
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in channels):
        raise KeyFileError("field 'channels' must be integers")
    key = Key(pattern=doc["pattern"], radius=doc["radius"], channels=tuple(channels), seed=doc["seed"],
              model=doc["model"], latent_shape=tuple(shape), version=doc["version"])
    validate(key)
    if key.key_id != doc["key_id"]:
        raise KeyFileError("key_id does not match the key's contents (file altered?)")
    return key

"""Reading the user's TOML files, and writing result files so that a reader never sees half of one: write
a temporary file beside the target, then rename it into place in one step."""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self


class TomlFileError(ValueError):
    """A TOML file that cannot be read or parsed; the message starts with its path."""


def read_toml(path: Path) -> dict[str, Any]:
    """A user's TOML file (a machine, a kernel, a sweep spec) as a dict. Every way it can be unreadable
    (missing, a folder, not UTF-8, not TOML) is a TomlFileError naming the file, so no caller meets a
    UnicodeDecodeError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TomlFileError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TomlFileError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                            "TOML files are UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TomlFileError(f"{path}: {e}") from None


def publish(tmp: Path | str, path: Path) -> None:
    """Move the finished temporary file `tmp` to `path`, with the mode a new file gets under the umask
    (mkstemp makes 0600; results are ordinary files)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


class PublishOnExit:
    """For writers with `close()` (publish) and `abort()` (drop what was written): a `with` block
    publishes when it ends normally and drops when it raises, Ctrl-C included."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@contextmanager
def published(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write the whole file to; published to `path` when the block
    ends normally, removed when it raises. It keeps `path`'s suffix, for writers that pick a format by it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

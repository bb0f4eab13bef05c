"""Wildcards: ``__name__`` in a prompt → one line of ``<wildcards_dir>/name.txt``, drawn reproducibly.

Each draw is fixed by (run seed, payload, field, occurrence), so every trial and a resumed run render
the same prompts; nested wildcards are expanded up to a depth limit.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path

from bayes_merger.errors import ConfigError

# a name starts with a letter or digit of any script and may hold spaces (``__hair colour__``, ``__färbe__``, as the
# 2023 tool took any name): such a name, once left in the prompt, was sent to the WebUI as text; ``^__^`` is none
_WILDCARD = re.compile(r"__([^\W_][\w./ -]*?)__")
_MAX_WILDCARD_DEPTH = 10


def derive(run_seed: int, *parts: object) -> int:
    """A 64-bit number fixed by its inputs, the same in every process (hash() is salted per process)."""
    text = "\x1f".join(str(p) for p in (run_seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def wildcards_dir(configured: str | None, root: Path) -> Path | None:
    if configured is not None:
        directory = Path(str(configured)).expanduser()
        if not directory.is_dir():
            raise ConfigError(f"payloads.wildcards_dir {directory} is not a folder.")
        return directory
    # Unset: a wildcards/ folder beside the payloads, if there is one.
    default = root / "wildcards"
    return default if default.is_dir() else None


class Wildcards:
    """``__name__`` → one line of ``<dir>/name.txt``, chosen by a draw fixed by the run seed."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._lines: dict[str, list[str]] = {}

    def expand(self, text: str, run_seed: int, payload: str, key: str, where: str) -> str:
        occurrence = 0

        def replace(match: re.Match[str], depth: int) -> str:
            nonlocal occurrence
            name = match.group(1)
            if depth > _MAX_WILDCARD_DEPTH:
                raise ConfigError(
                    f"{where}: wildcards nest more than {_MAX_WILDCARD_DEPTH} deep at '__{name}__' "
                    "(does one include itself?)."
                )
            lines = self._read(name, where)
            # Each occurrence gets its own draw, so "__color__ and __color__" may differ.
            line = lines[derive(run_seed, "wildcard", payload, key, occurrence) % len(lines)]
            occurrence += 1
            return _WILDCARD.sub(lambda m: replace(m, depth + 1), line)

        return _WILDCARD.sub(lambda m: replace(m, 1), text)

    def _read(self, name: str, where: str) -> list[str]:
        if name in self._lines:
            return self._lines[name]
        if self.directory is None:
            raise ConfigError(
                f"{where} uses the wildcard '__{name}__', but there is no wildcards folder: "
                "set payloads.wildcards_dir or add a wildcards/ folder beside the payloads."
            )
        file = self.directory / f"{name}.txt"
        if ".." in name.split("/") or not file.is_file():
            known = [p.relative_to(self.directory).with_suffix("").as_posix() for p in self.directory.rglob("*.txt")]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (closest: '{close[0]}')" if close else ""
            raise ConfigError(
                f"{where} uses the wildcard '__{name}__', but the wildcard file {file} does not exist{hint}."
            )
        try:
            raw = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read wildcard file {file}: {exc}.") from None
        lines = [s for s in (line.strip() for line in raw) if s and not s.startswith("#")]
        if not lines:
            raise ConfigError(
                f"wildcard file {file} has no lines to draw from (blank lines and # comments are skipped)."
            )
        self._lines[name] = lines
        return lines

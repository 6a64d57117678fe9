"""Dataset errors that name the file and line, and a collector that reports every problem of a read at once.

Contract
--------
:class:`DatasetError` (a ``ValueError``) is the only exception a reader raises for a dataset that does not
match its layout. Its message names the file and, for line-oriented files, the line (``<path>:<line>: ...``,
line 1 being a CSV header); JSON and XML problems name the file and the element (``annotations[3]``).

Readers collect the problems of a whole file — malformed rows and every image that cannot be found — in a
:class:`Problems` and raise them together, listing the first :data:`MAX_LISTED` and counting the rest, so a
person fixes a dataset in one pass rather than one error per run.
"""

from __future__ import annotations

__all__ = ["MAX_LISTED", "DatasetError", "Problems", "RowProblem"]

#: How many problems a :class:`DatasetError` message lists before it only counts the rest.
MAX_LISTED = 10


class DatasetError(ValueError):
    """A dataset on disk does not match its layout; the message says where (file, line) and what is wrong."""


class RowProblem(ValueError):
    """One malformed entry (row, annotation, object); readers catch it and add it to their :class:`Problems`."""


class Problems:
    """Problems found while reading one dataset, raised together by :meth:`raise_if_any`.

    ``what`` names the dataset and its layout (e.g. ``"APTOS 2019 at /data/aptos"``); it heads the message.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._entries: list[str] = []
        self._missing = 0
        # An ordered set of closing remarks (where images were looked for, hints), each shown once.
        self._notes: dict[str, None] = {}

    def add(self, where: str, message: str) -> None:
        """Record ``message`` about ``where`` (``"<path>:<line>"`` or ``"<path>: <element>"``)."""
        self._entries.append(f"{where}: {message}")

    def missing(self, where: str, name: str, searched: str) -> None:
        """Record that the image ``name`` listed at ``where`` was not found; ``searched`` says where it was
        looked for (reported once for all images that share it)."""
        self._entries.append(f"{where}: image {name!r} not found")
        self._missing += 1
        self.note(f"images were looked for in {searched}")

    def note(self, text: str) -> None:
        """Add a closing remark (a hint on how to fix the problems); each distinct remark is shown once."""
        self._notes[text] = None

    def __len__(self) -> int:
        return len(self._entries)

    def raise_if_any(self) -> None:
        """Raise one :class:`DatasetError` listing the first :data:`MAX_LISTED` problems, if there are any."""
        if not self._entries:
            return
        n = len(self._entries)
        head = f"{self._what}: {n} problem{'s' if n != 1 else ''}"
        if self._missing:
            head += f" ({self._missing} image{'s' if self._missing != 1 else ''} not found)"
        lines = [head + ":"] + [f"  {e}" for e in self._entries[:MAX_LISTED]]
        if n > MAX_LISTED:
            lines.append(f"  ... and {n - MAX_LISTED} more")
        lines += list(self._notes)
        raise DatasetError("\n".join(lines))

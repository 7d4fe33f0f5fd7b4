r"""A label vocabulary a user hands ``index --labels``: a list, or a text file of one label a line.

In a file, each line stripped of surrounding whitespace is one label; blank lines and comment
lines (starting with ``#``) are skipped, and a label that starts with ``#`` is written ``\#``
(``\#1 hits`` is the label ``#1 hits``). Nothing else is special: ``C#`` and ``a, b`` are labels as
written. A list passed from Python is taken verbatim.
Repeated labels count once, in first-seen order. No torch here: the Ray indexing driver reads
vocabularies too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clair_vec.errors import DatasetError

#: the most labels one vocabulary may hold: every label is one text-encoder pass at indexing time,
#: and every image is scored against all of them (the text side is batched, so memory stays flat)
MAX_LABELS = 50_000


def read_labels(path: str | Path) -> list[str]:
    """The labels of a labels file, verbatim (see the module docstring); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"labels file {str(path)!r} does not exist (--labels takes a text file with one label per line)")
    if not path.is_file():
        raise DatasetError(f"labels file {str(path)!r} is not a regular file (--labels takes a text file with one label per line)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark from a Windows editor is not part of the first label
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"labels file {str(path)!r} is not valid UTF-8 (byte 0x{data[exc.start]:02x} on line {line}); "
            "save it as UTF-8 and try again"
        ) from None
    lines = (line.strip() for line in text.splitlines())
    labels = [line[1:] if line.startswith("\\#") else line for line in lines if not line.startswith("#")]
    return vocabulary(labels, source=f"labels file {str(path)!r}")


def vocabulary(labels: Sequence[str] | str | Path | None, *, source: str = "the label vocabulary") -> list[str] | None:
    """A label list from a list or a labels file (None: no vocabulary), checked: not empty, not
    over :data:`MAX_LABELS`, every label a string."""
    if labels is None:
        return None
    if isinstance(labels, (str, Path)):
        return read_labels(labels)
    names: dict[str, None] = {}
    for n, label in enumerate(labels, 1):
        if not isinstance(label, str):
            raise DatasetError(f"{source}: label #{n} is a {type(label).__name__}; labels must be strings")
        label = label.strip()
        if label:
            names.setdefault(label, None)
    if not names:
        raise DatasetError(f"{source} is empty: give at least one label")
    if len(names) > MAX_LABELS:
        raise DatasetError(f"{source} has {len(names):,} labels; the limit is {MAX_LABELS:,} (split it, or tag with fewer)")
    return list(names)

"""Bad-input and fault cases for ``benchmarks/hostile_probe.py`` (issue 17).

Each ``cases_<area>.py`` module here defines ``cases(tmp: Path) -> list[Case]``: it writes whatever
bad files it needs under ``tmp`` and returns the ``relsafe`` command lines to try.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Case:
    """One hostile invocation of the ``relsafe`` CLI.

    ``argv``: the arguments after ``relsafe``. ``expect``: ``"error"`` (the input is bad: a clean
    error is required, success is *silent garbage*), ``"ok"`` (it must succeed) or ``"either"``.
    ``keep``: files or folders that must be byte-identical afterwards (else *data loss*).
    ``stdin``: text fed to the command. ``timeout``: seconds before it counts as a hang.
    """

    name: str
    argv: list[str]
    expect: str = "error"
    keep: list[Path] = field(default_factory=list)
    stdin: str | None = None
    timeout: float = 180.0

"""Errors as values: a name, the offending input and the fix.

Every module reports what went wrong as a `Problem`; `AgentError` carries problems across
call boundaries when a function cannot return a value. The command line formats them; nothing
below it prints tracebacks to the operator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Problem:
    """One thing that is wrong, said so an operator can fix it.

    name: a stable class, machine-readable (``invalid_value``, ``gpu_driver_mismatch``, ...).
    subject: what it is about (a variable, a file, a stage), never a secret.
    message: what is wrong, with the offending input (masked when secret).
    fix: what to do about it.
    """

    name: str
    subject: str
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        text = f"{self.subject}: {self.message}"
        return f"{text} (fix: {self.fix})" if self.fix else text


class AgentError(Exception):
    """Raised with one or more problems; `str()` lists them all."""

    def __init__(self, *problems: Problem) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems: tuple[Problem, ...] = problems

    @property
    def first(self) -> Problem:
        return self.problems[0]

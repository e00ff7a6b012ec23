"""The one error tree of tokenomy.

Every error tokenomy raises on purpose is a ``TokenomyError``; catch that to catch them all::

    TokenomyError
     ├── UserError                 your configuration or input is wrong; fix it and retry
     │    ├── UnknownModelSpec     a model spec string names no engine
     │    ├── MissingExtra         a backend needs an optional extra that is not installed
     │    ├── ModelNotFound        a model directory or file that is not a model
     │    ├── GrammarError         a grammar that does not compile
     │    ├── CapabilityError      an engine lacks what a policy needs (said at construction)
     │    └── ContextLengthExceeded  a prompt longer than the model's context window
     ├── RunError                  something failed while running; the input may be fine
     │    ├── EngineError          an engine failed (crashed, died mid-batch, bad server reply)
     │    └── RequestCancelled     a request was cancelled before it completed
     ├── BudgetExceeded            a token or call budget ran out
     └── PlanError                 a model's plan did not parse or validate (carries feedback)

This module is a leaf: it imports nothing from tokenomy, so every layer (``kernels`` first) may import it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys

__all__ = [
    "TokenomyError",
    "UserError",
    "UnknownModelSpec",
    "MissingExtra",
    "ModelNotFound",
    "GrammarError",
    "CapabilityError",
    "ContextLengthExceeded",
    "RunError",
    "EngineError",
    "RequestCancelled",
    "BudgetExceeded",
    "PlanError",
]


class TokenomyError(Exception):
    """Root of every error tokenomy raises on purpose."""


class UserError(TokenomyError, ValueError):
    """The caller's configuration or input is wrong (bad spec, unknown tool, invalid grammar...)."""


class UnknownModelSpec(UserError):
    """A model spec string that names no engine."""


class MissingExtra(UserError, ImportError):
    """An optional backend is used without its extra installed.

    The message names the exact ``pip install`` command to run, for this Python: where the ``pip`` on the PATH
    is another Python's (a ``.venv`` that is not activated, as ``.ci/tokenomy`` runs it), ``<this python> -m pip``.
    """

    def __init__(self, package: str, extra: str | None, what: str = "", install: str | None = None) -> None:
        self.package = package
        self.extra = extra
        self.install = install or f"pip install 'tokenomy[{extra}]'"
        what = what or package
        super().__init__(
            f"{what} needs the optional package {package!r}, which is not installed. "
            f"Install it with: {_for_this_python(self.install)}"
        )


def _for_this_python(command: str) -> str:
    pip = shutil.which("pip")
    mine = os.path.join(os.path.dirname(sys.executable), "pip")
    if not command.startswith("pip ") or (pip and os.path.realpath(pip) == os.path.realpath(mine)):
        return command
    return f"{shlex.quote(sys.executable)} -m {command}"


class ModelNotFound(UserError, FileNotFoundError):
    """A path that should hold a model does not."""


class GrammarError(UserError):
    """A grammar (EBNF, Lark, regex or JSON schema) that does not compile."""


class CapabilityError(UserError):
    """An engine lacks a capability that a policy needs; raised when the policy is built, not mid-run."""

    def __init__(self, who: str, engine: str, missing: list[str], hint: str = "") -> None:
        self.who, self.engine, self.missing = who, engine, list(missing)
        super().__init__(f"{who} needs {', '.join(missing)} from the {engine} engine, which lacks "
                         f"{'it' if len(missing) == 1 else 'them'}" + (f"; {hint}" if hint else ""))


class ContextLengthExceeded(UserError):
    """A prompt (plus the tokens asked for) longer than the model's context window."""

    def __init__(self, prompt_tokens: int, max_tokens: int, context_window: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_window = context_window
        super().__init__(
            f"prompt of {prompt_tokens} tokens does not fit the context window of {context_window} tokens "
            f"(the model needs at least one position to generate; {max_tokens} new tokens were asked for). "
            "Shorten the prompt or use a model with a longer context."
        )


class RunError(TokenomyError, RuntimeError):
    """Something failed at run time (a model, a server, a tool)."""


class EngineError(RunError):
    """An engine failed: it crashed, died mid-batch or answered something unusable."""


class RequestCancelled(RunError):
    """A request was cancelled before it completed."""


class StorageError(RunError):
    """A SQLite file (checkpoints, an index, a cache) or a PostgreSQL database (checkpoints) could not be read or
    written: locked by another process, a failing or full disk, a damaged file, a server gone. ``path`` names it
    (a database's URL without its password); what was written before is still in it."""

    def __init__(self, path: object, exc: BaseException) -> None:
        self.path = str(path)
        text = str(exc)
        low = text.lower()
        if type(exc).__module__.startswith("psycopg"):
            why = ("the PostgreSQL server could not be reached or refused it; check that it runs, the URL and "
                   "the credentials (what finished is kept in the database)")
        elif "locked" in low or "busy" in low:
            why = "it is locked by another process (the wait for the lock ran out); close that process or use " \
                  "another file"
        elif "full" in low:
            why = "the disk is full; free space and go on (what finished is kept)"
        elif "malformed" in low or "not a database" in low or "corrupt" in low:
            why = "the file is damaged; move it away (tokenomy never overwrites it) or restore it"
        elif "i/o" in low or "readonly" in low or "read-only" in low or "unable to open" in low:
            why = "the disk refused the read or write; check the file's disk and permissions"
        else:
            why = "SQLite refused it"
        super().__init__(f"{self.path}: {why} ({type(exc).__name__}: {text})")


def storage_error(path: object, exc: BaseException) -> StorageError:
    """``exc`` (a ``sqlite3.Error`` or a ``psycopg.Error``) as a ``StorageError`` about ``path``, chained to it."""
    err = StorageError(path, exc)
    err.__cause__ = exc
    return err


class BudgetExceeded(TokenomyError):
    """A token, call or dollar budget ran out; ``spent`` and ``limit`` say by how much, ``usage`` and ``dollars``
    what the finished calls spent (where a ``UsageLimits`` raised it)."""

    def __init__(self, what: str, spent: float, limit: float, *, usage: object = None,
                 dollars: float | None = None) -> None:
        self.what = what
        self.spent = spent
        self.limit = limit
        self.usage = usage
        self.dollars = dollars
        shown = f"{spent:.6g}" if isinstance(spent, float) else str(spent)
        done = f"; the finished calls spent {usage}" if usage is not None else ""
        done += f" (${dollars:.6f})" if dollars else ""
        super().__init__(f"budget exceeded: {what} {shown} > limit {limit}{done}")


class PlanError(TokenomyError):
    """A model's plan did not parse or validate.

    ``feedback`` is text meant to be sent back to the model so it can repair the plan.
    """

    def __init__(self, message: str, feedback: str | None = None) -> None:
        self.feedback = feedback if feedback is not None else message
        super().__init__(message)

"""Nox sessions: ``tests`` (what CI runs: lint, then the fast tests, then the slow lane), ``fast``
and ``slow`` (the two test lanes alone), ``lint`` (ruff), ``demo`` (the default run and its report)
and ``asv`` (benchmarks in the current environment, results kept).

Every session shares one virtualenv, ``.nox/shared``: installing torch takes a minute, so it is
paid once, not per session (nox itself makes one virtualenv per session). Each of them brings the
project up to date there with ``pip install -e .[dev,ray]``, which takes seconds once everything is
installed; ruff comes with the dev extra.

A command that exits non-zero fails its session; that includes pytest's exit code 5, "no tests
collected", so a lane that selects nothing cannot pass unnoticed.
"""

import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"

SHARED_VENV = Path(".nox") / "shared"


def shared_python(session: nox.Session) -> str:
    """The shared virtualenv's python, created on first use, with the project installed."""
    python = SHARED_VENV / "bin" / "python"
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(SHARED_VENV), external=True)
    session.run(str(python), "-m", "pip", "install", "-e", ".[dev,ray]", external=True)
    return str(python)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """What CI runs: ruff, the fast tests, then the slow lane (about 11 minutes on 2 cores)."""
    python = shared_python(session)
    run_lint(session, python)
    run_pytest(session, python, "not slow")
    run_pytest(session, python, "slow")


@nox.session(venv_backend="none")
def fast(session: nox.Session) -> None:
    """The fast tests: everything not marked slow."""
    run_pytest(session, shared_python(session), "not slow", *session.posargs)


@nox.session(venv_backend="none")
def slow(session: nox.Session) -> None:
    """The slow end-to-end tests (resume after SIGKILL, a run on Ray, the installed wheel)."""
    run_pytest(session, shared_python(session), "slow", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting (pyproject.toml's settings)."""
    run_lint(session, shared_python(session))


def run_lint(session: nox.Session, python: str) -> None:
    session.run(python, "-m", "ruff", "check", ".", external=True)
    session.run(python, "-m", "ruff", "format", "--check", ".", external=True)


def run_pytest(session: nox.Session, python: str, marker: str, *arguments: str) -> None:
    session.run(python, "-m", "pytest", "-m", marker, *arguments, external=True)


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """The default benchmark (`depthbench run`), then its report."""
    python = shared_python(session)
    depthbench = [python, "-c", "from suite.cli.app import main; main()"]
    session.run(*depthbench, "run", "--results", "results", external=True)
    session.run(*depthbench, "report", f"results/{default_run_id(session, python)}", external=True)


def default_run_id(session: nox.Session, python: str) -> str:
    """The run id `depthbench run` gives the default benchmark (name + hash of its cells)."""
    return session.run(
        python,
        "-c",
        "from suite.run.config import DEFAULT_CONFIG, load_experiment; "
        "from suite.run.grid import default_run_id, grid; "
        "e = load_experiment(DEFAULT_CONFIG); print(default_run_id(e, grid(e)), end='')",
        external=True,
        silent=True,
    )


@nox.session(venv_backend="none")
def asv(session: nox.Session) -> None:
    """asv in the shared environment, results kept under .asv/results for this commit.

    Refuses a tree with uncommitted changes: the results would be filed under a commit that did not
    produce them."""
    changes = session.run(
        "git", "status", "--porcelain", "--untracked-files=no", external=True, silent=True
    )
    if changes.strip():
        session.error(
            "the working tree has uncommitted changes; commit or stash them first, so that the "
            "benchmarks are those of the commit they are filed under"
        )
    python = shared_python(session)
    commit = session.run("git", "rev-parse", "HEAD", external=True, silent=True).strip()
    session.run(python, "-m", "asv", "machine", "--yes", external=True)
    session.run(
        python,
        "-m",
        "asv",
        "run",
        "-E",
        "existing:same",
        "--set-commit-hash",
        commit,
        *session.posargs,
        external=True,
    )

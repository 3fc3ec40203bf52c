"""Nox sessions: ``tests`` (fast), ``slow`` (end to end), ``demo`` (the default run and its
report), ``lint`` (ruff) and ``asv`` (benchmarks in the current environment, results kept).

tests, slow, demo and asv share one virtualenv, ``.nox/shared``: installing torch takes a minute,
so it is paid once, not per session (nox itself makes one virtualenv per session). Each of them
brings the project up to date there with ``pip install -e .[dev,ray]``, which takes seconds once
everything is installed. lint has its own small environment with ruff only.
"""

import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
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
    """The fast tests: everything not marked slow."""
    python = shared_python(session)
    session.run(python, "-m", "pytest", "-m", "not slow", *session.posargs, external=True)


@nox.session(venv_backend="none")
def slow(session: nox.Session) -> None:
    """The slow end-to-end tests (resume after SIGKILL, a run on Ray)."""
    python = shared_python(session)
    session.run(python, "-m", "pytest", "-m", "slow", *session.posargs, external=True)


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


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting (pyproject.toml's settings)."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


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

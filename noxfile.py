"""Sessions: `nox` runs lint, typecheck and the whole test suite (what CI runs); `nox -s core` etc. for parts.

torch is pinned through constraints.txt (the CPU build), never in the package's own dependencies.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_missing_interpreters = False

CONSTRAINTS = ("-c", "constraints.txt")
SOURCES = ("ww_callbacks", "tests", "benchmarks", "examples", "noxfile.py")
KERAS_BACKENDS = ("tensorflow", "torch", "jax")


def _install_test(session: nox.Session) -> None:
    session.install("-e", ".[test]", *CONSTRAINTS)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the package (framework imports are untyped and ignored)."""
    session.install("mypy>=1.10", "-e", ".", *CONSTRAINTS)
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    """Everything: core, parity, Lightning (DDP included), W&B, CLI, examples, and Keras on every backend.

    Keras fixes its backend per process, so the Keras-marked tests run once more for torch and JAX.
    """
    _install_test(session)
    session.run(
        "pytest",
        "--doctest-modules",
        "ww_callbacks",
        "tests",
        *session.posargs,
        env={"KERAS_BACKEND": "tensorflow"},
    )
    for backend in KERAS_BACKENDS[1:]:
        session.run(
            "pytest",
            "-m",
            "keras and not tensorflow_only",
            "tests",
            *session.posargs,
            env={"KERAS_BACKEND": backend},
        )


@nox.session
def core(session: nox.Session) -> None:
    """The framework-free core only: numpy, scipy and pytest."""
    session.install("-e", ".", "pytest>=8", "pandas")
    session.run(
        "pytest",
        "tests/test_powerlaw.py",
        "tests/test_analyze.py",
        "tests/test_stopping.py",
        "tests/test_stopping_replay.py",
        "tests/test_zeros.py",
        "-k",
        "not weightwatcher",
        *session.posargs,
    )


@nox.session
def parity(session: nox.Session) -> None:
    """Comparisons with weightwatcher 0.7.7."""
    _install_test(session)
    session.run("pytest", "-m", "parity", "tests", *session.posargs)


@nox.session
def lightning(session: nox.Session) -> None:
    """The Lightning callback (both namespaces, DDP)."""
    _install_test(session)
    session.run("pytest", "-k", "lightning or stopping or monitor or ddp", "tests", *session.posargs)


@nox.session
def transformers(session: nox.Session) -> None:
    """The Hugging Face Trainer callback (2 processes included) and the history it writes."""
    _install_test(session)
    session.run("pytest", "tests/test_transformers_callback.py", "tests/test_history.py", *session.posargs)


@nox.session
@nox.parametrize("backend", KERAS_BACKENDS)
def keras(session: nox.Session, backend: str) -> None:
    """The Keras callback and snapshot on one backend."""
    _install_test(session)
    marker = "keras" if backend == "tensorflow" else "keras and not tensorflow_only"
    session.run("pytest", "-m", marker, "tests", *session.posargs, env={"KERAS_BACKEND": backend})

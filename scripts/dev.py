"""Project tasks that work on a fresh machine with nothing but Python 3.

    python3 scripts/dev.py demo    # a batch of videos from the built-in simulator
    python3 scripts/dev.py test    # ruff, mypy --strict, the docs build and pytest
    python3 scripts/dev.py docs    # build the docs site into site/ (mkdocs --strict)
    python3 scripts/dev.py bench   # the benchmarks in benchmarks/

Each task first makes ``.venv`` beside this repository (once) and installs the
project into it with its development extras; it reinstalls only when
``pyproject.toml`` changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".installed-from"


def _run(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    code = subprocess.call([str(c) for c in cmd], cwd=ROOT)  # noqa: S603 - our own tools
    if code:
        sys.exit(code)


def ensure_env() -> None:
    """Create the virtual environment and install the project if it is stale."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text() == digest:
        return
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    _run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", ".[dev]")
    STAMP.write_text(digest)


def test(args: list[str]) -> None:
    ensure_env()
    _run(BIN / "ruff", "check", ".")
    _run(BIN / "ruff", "format", "--check", ".")
    _run(PY, "-m", "mypy")
    docs(["--site-dir", str(VENV / "site")])
    # Workers unless the caller picks tests or workers. Most tests wait on compressed
    # rate windows rather than the CPU, so six share two cores well (on a 2-core
    # machine: 112 s with four, 100 s with six, no better with eight), each taking
    # the next test as it frees (worksteal), so that a long one does not end the run.
    cpus = os.cpu_count() or 1
    workers = [] if args else ["-n", str(max(6, min(12, 3 * cpus))), "--dist", "worksteal"]
    _run(PY, "-m", "pytest", *workers, *args)


def docs(args: list[str]) -> None:
    """Build the docs site with every warning an error (``--site-dir DIR`` to choose)."""
    ensure_env()
    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")  # a banner, not a finding
    _run(PY, "-m", "mkdocs", "build", "--strict", *args)


def demo(args: list[str]) -> None:
    ensure_env()
    _run(BIN / "grokimagine", "demo", *args)


def bench(args: list[str]) -> None:
    ensure_env()
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        if not script.name.startswith("_"):
            _run(PY, script, *args)


TASKS = {"test": test, "demo": demo, "bench": bench, "docs": docs}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        print(__doc__)
        sys.exit(2)
    TASKS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()

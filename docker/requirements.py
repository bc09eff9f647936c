"""Runtime requirements of the project, read from pyproject.toml, for the image builds.

The images install the dependencies in a layer of their own, before the source is copied,
so that a change to the code does not reinstall TensorFlow. This script is that layer's
input, and its output matches what ``pip install .`` would resolve.

    python docker/requirements.py export          # pins as written (CPU image)
    python docker/requirements.py export --gpu    # TensorFlow's CUDA build instead
    python docker/requirements.py check [--gpu]   # ``pip check``, minus the known gaps

The GPU image cannot ``pip install .``: on x86_64 pyproject.toml pins ``tensorflow-cpu``,
and installing it beside ``tensorflow[and-cuda]`` would overwrite the CUDA build's files
(both ship the ``tensorflow`` package). ``export --gpu`` therefore drops every TensorFlow
requirement and adds ``tensorflow[and-cuda]`` at the version pyproject.toml pins; the
project itself is then installed with ``--no-deps``.

Standard library only: it runs in a bare ``python:3.11`` image.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
TENSORFLOW_DISTRIBUTIONS = {"tensorflow", "tensorflow-cpu"}
_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PIN = re.compile(r"==\s*([A-Za-z0-9.+!-]+)")


def normalize(name: str) -> str:
    """PEP 503 form of a distribution name (``Tensorflow_CPU`` -> ``tensorflow-cpu``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"Cannot read a distribution name from requirement: {requirement!r}")
    return normalize(match.group(1))


def project_dependencies(pyproject: Path = PYPROJECT) -> list[str]:
    with pyproject.open("rb") as handle:
        return list(tomllib.load(handle)["project"]["dependencies"])


def tensorflow_version(dependencies: list[str]) -> str:
    """The single TensorFlow version that pyproject.toml pins (CPU and non-x86 lines agree)."""
    versions = set()
    for requirement in dependencies:
        if requirement_name(requirement) in TENSORFLOW_DISTRIBUTIONS:
            pin = _PIN.search(requirement.split(";", 1)[0])
            if pin is None:
                raise ValueError(f"TensorFlow must be pinned with '=='. Received: {requirement!r}")
            versions.add(pin.group(1))
    if len(versions) != 1:
        raise ValueError(f"Expected one pinned TensorFlow version. Received: {sorted(versions)}")
    return versions.pop()


def export(*, gpu: bool, pyproject: Path = PYPROJECT) -> list[str]:
    """Requirement lines for ``pip install -r``."""
    dependencies = project_dependencies(pyproject)
    if not gpu:
        return dependencies
    version = tensorflow_version(dependencies)
    kept = [r for r in dependencies if requirement_name(r) not in TENSORFLOW_DISTRIBUTIONS]
    return [*kept, f"tensorflow[and-cuda]=={version}"]


def accepted_gap(line: str, *, gpu: bool) -> bool:
    """``pip check`` lines that the images produce on purpose."""
    # medmnist is installed with --no-deps: only its metadata and downloader are used,
    # not its torch-based dataset classes.
    if line.startswith("medmnist "):
        return True
    # The GPU image replaces the pinned tensorflow-cpu with tensorflow[and-cuda].
    return gpu and line.startswith("medplatform ") and "tensorflow-cpu" in line


def check(*, gpu: bool) -> int:
    """``pip check`` of the running environment, less the accepted gaps; 0 when consistent."""
    if gpu and _installed("tensorflow-cpu"):
        print(
            "tensorflow-cpu is installed; the GPU image needs TensorFlow's CUDA build only.",
            file=sys.stderr,
        )
        return 1
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    problems = [
        line
        for line in lines
        if not line.startswith("No broken requirements") and not accepted_gap(line, gpu=gpu)
    ]
    for line in problems:
        print(line, file=sys.stderr)
    if result.returncode != 0 and not lines:
        print(result.stderr, file=sys.stderr)
        return result.returncode
    return 1 if problems else 0


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=["export", "check"])
    parser.add_argument("--gpu", action="store_true", help="TensorFlow's CUDA build")
    args = parser.parse_args(argv)
    if args.command == "export":
        print("\n".join(export(gpu=args.gpu)))
        return 0
    return check(gpu=args.gpu)


if __name__ == "__main__":
    sys.exit(main())

"""requirements.lock installs on every Python that pyproject.toml's classifiers list, shown without those
interpreters: for each, pip resolves the lock against PyPI's wheels for that Python on Linux x86_64
(manylinux_2_28, torch's own floor), as a dry run, and must find exactly the lock's pins that apply
there, nothing it would add unpinned. A package that ships only a source archive must be pure Python:
it is built into a py3-none-any wheel first (SOURCE_ONLY), and offered to pip beside PyPI.

Run by .ci/run with the project's venv Python (it reads the lock with `packaging`); needs PyPI.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ONLY = {"antlr4-python3-runtime"}  # 4.9.3, which omegaconf 2.3 requires, has no wheel
# manylinux_2_28 wheels and every older glibc's (pip does not widen --platform by itself), legacy names too
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + [
    f"manylinux{year}_x86_64" for year in ("2014", "2010", "1")
]


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    versions = [c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if re.fullmatch(r".*Python :: 3\.\d+", c)]
    allowed = SpecifierSet(project["requires-python"])
    if not versions or any(f"{v}.0" not in allowed for v in versions):
        sys.exit(f"pyproject.toml: classifiers list Python {versions}, requires-python is {allowed}")
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]

    with tempfile.TemporaryDirectory(prefix="lock-installs-") as tmp:
        # pip >= 23.3 reads PyPI's metadata files, so the dry runs never download torch's 550 MB wheels
        subprocess.run([sys.executable, "-m", "venv", f"{tmp}/pip"], check=True)
        pip = [f"{tmp}/pip/bin/python", "-m", "pip", "--disable-pip-version-check", "--quiet"]
        subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
        sources = [str(pin) for pin in pins if canonicalize_name(pin.name) in SOURCE_ONLY]
        subprocess.run(
            [*pip, "wheel", "--no-deps", "--no-binary", ":all:", "-w", f"{tmp}/wheels", *sources], check=True
        )
        impure = [w.name for w in Path(f"{tmp}/wheels").iterdir() if not w.name.endswith("-py3-none-any.whl")]
        if impure:
            sys.exit(f"not pure Python, so not installable from source everywhere: {impure}")

        failed = False
        for version in versions:
            report = Path(tmp) / f"report-{version}.json"
            platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
            resolved = subprocess.run(
                [*pip, "install", "--dry-run", "--ignore-installed", "--target", f"{tmp}/target"]
                + ["--only-binary=:all:", "--python-version", version, *platforms]
                + ["--find-links", f"{tmp}/wheels", "--report", str(report), "-r", str(ROOT / "requirements.lock")],
                capture_output=True,
                text=True,
            )
            if resolved.returncode != 0:
                errors = [line for line in resolved.stderr.splitlines() if line.startswith("ERROR")]
                print(f"Python {version}: requirements.lock does not install: {' '.join(errors[-2:])}")
                failed = True
                continue
            installs = {
                canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]
            }
            environment = default_environment() | {"python_version": version, "python_full_version": f"{version}.0"}
            wanted = {
                canonicalize_name(pin.name): str(next(iter(pin.specifier)).version)
                for pin in pins
                if pin.marker is None or pin.marker.evaluate(environment)
            }
            if installs != wanted:
                extra = sorted(f"{name}=={v}" for name, v in installs.items() if wanted.get(name) != v)
                missing = sorted(f"{name}=={v}" for name, v in wanted.items() if installs.get(name) != v)
                print(f"Python {version}: pip would install {extra} beyond requirements.lock, and not {missing}")
                failed = True
                continue
            built = f"; {', '.join(sources)} built from source" if sources else ""
            print(f"Python {version}: requirements.lock installs as pinned ({len(installs)} packages{built})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

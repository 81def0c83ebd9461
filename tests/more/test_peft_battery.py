"""PEFT's own adapter test battery, run against MoRe.

The battery is `tests/test_custom_models.py` (with `testing_common.py` and `testing_utils.py`) of the installed
PEFT release. Its source distribution is downloaded from the package registry on first use and kept in the user
cache (`$XDG_CACHE_HOME` or `~/.cache`, under `more-harness/peft-sdist/`), so later runs are offline. The three
files are extracted into a temporary folder and run in a pytest subprocess with `peft_battery_plugin`, which
puts MoRe's cases in the place of PEFT's. Nothing of PEFT's source is kept in this repository.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import peft
import pytest

from peft_battery_plugin import BATTERY_DIR_ENV, BATTERY_PACKAGE

REPO_ROOT = Path(__file__).resolve().parents[2]
BATTERY_FILES = ("test_custom_models.py", "testing_common.py", "testing_utils.py")
INDEX_URL = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/")
BATTERY_TIMEOUT_S = 900

# The skips the battery may report, each a reason PEFT's own test gives, and why it does not concern MoRe
# (README, "PEFT's test battery").
DOCUMENTED_SKIPS = {
    "Testing bias warnings only for LoraConfig or BOFTConfig":
        "PEFT's test skips every method (its condition is always true); test_peft_integration checks the warning",
    "Multiple active adapters with modules_to_save/trainable_token_indices is not supported":
        "a PEFT limitation for every method: one active adapter when modules_to_save is set",
}


def sdist_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "more-harness" / "peft-sdist"


def _registry_unreachable() -> str | None:
    """Why the package index cannot be reached, or None when it answers."""
    try:
        urllib.request.urlopen(INDEX_URL, timeout=15).close()
    except (urllib.error.URLError, OSError) as err:
        return f"{INDEX_URL}: {err}"
    return None


def peft_sdist(download_dir: Path) -> Path:
    """The cached source distribution of the installed PEFT, downloaded into the cache first if needed."""
    version = peft.__version__
    cached = sdist_cache_dir() / f"peft-{version}.tar.gz"
    if cached.is_file():
        return cached
    command = [sys.executable, "-m", "pip", "download", f"peft=={version}", "--no-binary", ":all:", "--no-deps",
               "--disable-pip-version-check", "-d", str(download_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    downloaded = download_dir / cached.name
    if done.returncode != 0 or not downloaded.is_file():
        offline = _registry_unreachable()
        if offline:
            pytest.skip(f"the package registry is unreachable, so PEFT's sdist cannot be downloaded ({offline})")
        pytest.fail(f"`{' '.join(command)}` failed although the registry answers:\n{done.stdout}\n{done.stderr}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(cached.name + ".partial")
    shutil.copyfile(downloaded, partial)
    os.replace(partial, cached)  # a whole file or none, even when interrupted
    return cached


def extract_battery(sdist: Path, root: Path) -> Path:
    """The battery's files as the package `peft_battery` under root; returns its test module."""
    package = root / BATTERY_PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    with tarfile.open(sdist) as archive:
        prefix = archive.getnames()[0].split("/")[0]
        for name in BATTERY_FILES:
            member = archive.extractfile(f"{prefix}/tests/{name}")
            (package / name).write_bytes(member.read())
    (root / "pytest.ini").write_text("[pytest]\n")
    return package / "test_custom_models.py"


def run_battery(root: Path, module: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Runs the battery in a pytest subprocess; returns it and one record per test from its JUnit report."""
    report = root / "report.xml"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **{BATTERY_DIR_ENV: str(root)})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), str(Path(__file__).parent),
                                                      env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", str(module), "-c", str(root / "pytest.ini"), "--rootdir", str(root),
               "-p", "peft_battery_plugin", "-p", "no:cacheprovider", "-q", "-rfEs", "-W", "ignore",
               f"--junitxml={report}"]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=BATTERY_TIMEOUT_S)
    records = []
    if report.is_file():
        for case in ET.parse(report).iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    errors = [line for line in (child.text or "").splitlines() if line.startswith("E ")]
                    outcome, message = child.tag, "\n".join([child.get("message", "")] + errors[:8])
            records.append({"name": case.get("name"), "outcome": outcome, "message": message})
    return done, records


def test_peft_battery_passes_for_more(tmp_path):
    sdist = peft_sdist(tmp_path / "download")
    module = extract_battery(sdist, tmp_path / "battery")
    done, records = run_battery(tmp_path / "battery", module)
    tail = done.stdout[-6000:] + done.stderr[-3000:]
    assert records, f"PEFT's battery reported no tests (exit status {done.returncode}):\n{tail}"

    failed = [f"{r['name']}: {r['message']}" for r in records if r["outcome"] in ("failure", "error")]
    assert not failed, f"{len(failed)} of PEFT's tests fail for MoRe:\n" + "\n".join(failed) + f"\n\n{tail}"
    undocumented = sorted({r["message"] for r in records if r["outcome"] == "skipped"
                           and not any(reason in r["message"] for reason in DOCUMENTED_SKIPS)})
    assert not undocumented, f"PEFT's battery skips tests for reasons not documented for MoRe: {undocumented}"
    assert done.returncode == 0, tail
    passed = sum(r["outcome"] == "passed" for r in records)
    assert passed >= 400, f"only {passed} of PEFT's tests ran for MoRe; were MoRe's cases swapped in?\n{tail}"

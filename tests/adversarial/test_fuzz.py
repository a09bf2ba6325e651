"""The fuzz targets of fuzz_targets.py: the corpus replayed in every run, atheris runs under ``-m fuzz``.

* ``test_corpus_entry`` replays each file of ``corpus/<target>/`` through its
  target (no atheris needed); entries listed in ``corpus/KNOWN_BUGS`` are
  expected to fail until their bug is fixed (strict xfail);
* ``test_fuzz_run`` (marker ``fuzz``) runs atheris for a bounded number of
  iterations on each target, seeded with a copy of the corpus, and fails
  with the crashing input if the target's invariant breaks. Skipped when
  atheris is not installed.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from . import fuzz_targets

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
REPO = HERE.parents[1]


def _known_bugs() -> dict[str, str]:
    bugs = {}
    for line in (CORPUS / "KNOWN_BUGS").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            entry, _, reason = line.partition(" ")
            bugs[entry] = reason
    return bugs


def _entries() -> list:
    bugs = _known_bugs()
    params = []
    for target in sorted(fuzz_targets.TARGETS):
        for path in sorted((CORPUS / target).iterdir()):
            entry = f"{target}/{path.name}"
            marks = [pytest.mark.xfail(reason=bugs[entry], strict=True)] if entry in bugs else []
            params.append(pytest.param(target, path, id=entry, marks=marks))
    return params


@pytest.mark.parametrize("target, path", _entries())
def test_corpus_entry(target, path):
    """Each corpus entry keeps its target's invariant (regression test for what fuzzing found)."""
    fuzz_targets.TARGETS[target](path.read_bytes())


def test_known_bugs_name_real_entries():
    """Every line of KNOWN_BUGS names a corpus entry that exists."""
    for entry in _known_bugs():
        assert (CORPUS / entry).is_file(), entry


HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


@pytest.mark.fuzz
@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not installed (pip install atheris)")
@pytest.mark.parametrize(
    "target, runs",
    [
        pytest.param("manifest", 200_000),
        pytest.param("classify", 1_000_000),
    ],
)
def test_fuzz_run(target, runs, tmp_path):
    """A bounded atheris run of one target, seeded with (a copy of) the corpus, finds no crash."""
    work = tmp_path / "corpus"
    shutil.copytree(CORPUS / target, work)
    done = subprocess.run(
        [sys.executable, str(HERE / "fuzz_targets.py"), target, f"-runs={runs}", "-seed=1",
         "-max_len=4096", "-timeout=10", f"-artifact_prefix={tmp_path}/", str(work)],
        capture_output=True, timeout=600, cwd=REPO,
    )
    output = done.stderr.decode(errors="replace")
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    print(output[-1500:])
    assert done.returncode == 0 and not crashes, (
        f"{target}: atheris found {crashes}; replay with fuzz_targets.TARGETS[{target!r}](open(...).read()) "
        f"and add it to corpus/{target}/\n{output[-3000:]}"
    )

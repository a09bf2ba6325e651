"""Fixtures and markers of the adversarial suite (issue 5).

Markers registered here (pyproject.toml is not ours to edit):

* ``fuzz`` -- the atheris fuzz runs (bounded; need ``pip install atheris``);
  ``pytest -m fuzz tests/adversarial``;
* ``slow`` is registered by pyproject.toml: long crash loops and load runs.

``adv_pki`` is a small test PKI (alice, bob) minted once per session, in a
temporary directory.
"""

from __future__ import annotations

import pytest

from gsitransfer.testca import TestPKI, make_test_pki


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fuzz: atheris fuzz runs of the parsers (bounded; need atheris installed)"
    )
    config.addinivalue_line("markers", "slow: long-running tests (crash loops, load)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fuzz runs only when asked for by marker (``-m fuzz``): a plain run skips them."""
    if "fuzz" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="fuzz run: select it with -m fuzz")
    for item in items:
        if item.get_closest_marker("fuzz") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def adv_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """A test PKI with users alice and bob (see gsitransfer.testca.make_test_pki)."""
    return make_test_pki(tmp_path_factory.mktemp("adv-pki"), users=["alice", "bob"], share_keys=True)

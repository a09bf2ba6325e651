"""Reading what a Deferred already gave, in tests that run without a reactor."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure


def result_of(deferred: defer.Deferred[Any]) -> Any:
    """The result of a Deferred that has fired (its failure raised); an error if it has not."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]

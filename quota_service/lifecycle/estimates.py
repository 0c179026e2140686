"""Estimates: how close backends' estimates are to what they use. Pure: no I/O.

Per tier, feature, provider/model and metric, over COMMITTED records (the ones settled
with an actual; RELEASED used nothing, EXPIRED never said): the ratio ``actual / estimate``
of every record that estimated the metric (``estimate > 0``; ``cost_usd`` included, the
estimate's cost against the actual's), reduced to count, nearest-rank p50 and p95, mean,
and how many used more than they estimated. A p95 well below 1 means reservations hold far
more than is used (early denials); above 1, usage overshoots its reservation until the
commit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["CommittedUsage", "EstimateRatio", "EstimateRatios", "estimate_ratios"]


@dataclass(frozen=True, slots=True)
class CommittedUsage:
    """One COMMITTED record: units per metric."""

    tier: str
    feature: str
    provider: str
    model: str
    estimate: Mapping[str, int]
    actual: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class EstimateRatio:
    tier: str
    feature: str
    provider: str
    model: str
    metric: str
    count: int
    p50: float
    p95: float
    mean: float
    over: int


def _rank(ordered: list[float], percentile: int) -> float:
    return ordered[max(1, math.ceil(percentile * len(ordered) / 100)) - 1]


class EstimateRatios:
    """The ratios gathered record by record (:meth:`add`), reduced by :meth:`result`:
    one float per record and metric is kept, nothing else."""

    def __init__(self, *, tier: str = "") -> None:
        self._tier = tier
        self._groups: dict[tuple[str, str, str, str, str], list[float]] = {}

    def add(self, record: CommittedUsage) -> None:
        if self._tier and record.tier != self._tier:
            return
        for metric, estimated in record.estimate.items():
            if estimated <= 0:
                continue
            key = (record.tier, record.feature, record.provider, record.model, metric)
            self._groups.setdefault(key, []).append(record.actual.get(metric, 0) / estimated)

    def result(self) -> list[EstimateRatio]:
        """Sorted by tier, feature, provider, model, metric."""
        found = []
        for key, ratios in sorted(self._groups.items()):
            ordered = sorted(ratios)
            found.append(
                EstimateRatio(
                    *key,
                    count=len(ordered),
                    p50=_rank(ordered, 50),
                    p95=_rank(ordered, 95),
                    mean=math.fsum(ordered) / len(ordered),
                    over=sum(1 for r in ordered if r > 1),
                )
            )
        return found


def estimate_ratios(records: Iterable[CommittedUsage], *, tier: str = "") -> list[EstimateRatio]:
    """See the module docstring; ``tier`` ``""``: every tier."""
    ratios = EstimateRatios(tier=tier)
    for record in records:
        ratios.add(record)
    return ratios.result()

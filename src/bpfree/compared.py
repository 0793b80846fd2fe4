"""The metrics compared against bp: one record each, the one list that the deltas and verdicts
(bpfree.stats) and the report's tables (bpfree.report) iterate. docs/adding-a-metric.md adds one.

A metric's delta against bp has a unit: "pp", the difference of means in percentage points (an
accuracy), or "pct", the ratio of means minus 1 in percent (time, energy, memory: the published
table's convention). `symbol` and `delta_format` are the only place that unit is spelt for readers.
"""
from __future__ import annotations

from dataclasses import dataclass

REFERENCE = "bp"  # the algorithm every other is compared against, on the same dataset and architecture


@dataclass(frozen=True)
class Metric:
    """One compared metric.

    `name`: its column in summary.csv (a key of metrics.json); `unit`: "pp" or "pct";
    `label`: the stem of its columns in the report's delta table (`<label> ours [95% CI]`);
    `higher_is_better`: a larger value is the better one (accuracy), else a smaller (cost);
    `published`: the column of published_deltas.csv holding the original study's delta (None: the
    study did not publish one; the delta table then shows ours only where there is an estimate);
    `margin`: its key in protocol.statistics.margins (None: the metric's name);
    `default_margin`: the verdicts' margin where the config names none, in the unit of the delta
    (None: no verdict unless the config gives a margin);
    `claimed_by`: the metric whose delta a published claim on this one is held against where these
    runs have it (the study's quantity: GPU board energy for its energy claims);
    `estimated_by`: the column of the method that, where it says "estimate", makes this metric a
    model of time (no verdict of its own); `in_table`: shown in the report's delta table."""

    name: str
    unit: str
    label: str
    higher_is_better: bool = False
    published: str | None = None
    margin: str | None = None
    default_margin: float | None = 10.0
    claimed_by: str | None = None
    estimated_by: str | None = None
    in_table: bool = True

    def __post_init__(self) -> None:
        if self.unit not in ("pp", "pct"):
            raise ValueError(f"metric {self.name}: unit {self.unit!r} is not 'pp' or 'pct'")

    @property
    def margin_key(self) -> str:
        return self.margin or self.name


# Default margins. Accuracy 0.5 pp: the size of the largest MLP accuracy edge the original study claimed
# on MNIST/Fashion-MNIST (+0.51 pp) and within the seed-to-seed sd it published for bp (0.10-0.63 pp).
# Time, energy, memory 10 % (the field's default): below the smallest energy saving the camera-ready
# version claims (12.5 %).
COMPARED = (
    Metric("test_accuracy", "pp", "delta_acc_pp", higher_is_better=True, published="delta_acc_pp",
           default_margin=0.5),
    Metric("train_time_s", "pct", "delta_time_pct", published="delta_time_pct"),
    Metric("cpu_time_s", "pct", "delta_cpu_time_pct", in_table=False),
    Metric("energy_j", "pct", "delta_energy_pct", published="delta_energy_pct", claimed_by="energy_board_j",
           estimated_by="energy_method"),
    Metric("energy_dynamic_j", "pct", "delta_dynamic_energy_pct", estimated_by="energy_method"),
    Metric("energy_board_j", "pct", "delta_board_energy_pct"),
    Metric("peak_memory_mib", "pct", "delta_mem_pct", published="delta_mem_pct"),
)
BY_NAME = {m.name: m for m in COMPARED}


def symbol(unit: str) -> str:
    """The unit as a reader sees it: "pp" or "%"."""
    return "pp" if unit == "pp" else "%"


def delta_format(unit: str) -> str:
    """The format of a delta in `unit`: two decimals of a percentage point, one of a percent."""
    return "+.2f" if unit == "pp" else "+.1f"

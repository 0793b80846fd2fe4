"""The idle baseline measured once per host and device, and reused: a final run that measures its
idle power stores it in `<folder>/idle/<host>-<device key>.json` (watts per component, how long it
was measured, the methods and sources, when, by which run, whether that run was alone); a later
final run of the workflow on the same host and device reuses it while it is at most `max_age_s`
seconds old, and skips its own idle wait. Reused only when measured by the same methods and
sources (`signature`), and, for a run metered alone, only when measured alone too (a baseline
measured beside other jobs counts their power)."""
from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bpfree import io


@dataclass
class Idle:
    """A run's idle baseline: watts per component (None: no reading), the seconds it was measured
    over, and the stored record it was reused from (None: measured by this run)."""

    w: dict[str, float | None]
    seconds: float
    reused: dict | None = None


def idle_record(idle: Idle | None) -> dict:
    """What metrics.json says of the baseline (`idle_seconds`, `idle_note`, `idle_reused`,
    `idle_age_s`, `idle_measured_by`); `idle` None: the run had none (idle_seconds = 0)."""
    reused = idle.reused if idle is not None else None
    return {"idle_seconds": idle.seconds if idle is not None else None,
            "idle_note": None if idle is not None else "no idle baseline (protocol.metering.idle_seconds = 0)",
            "idle_reused": reused is not None, "idle_age_s": reused["age_s"] if reused else None,
            "idle_measured_by": reused["measured_by"] if reused else None}


class IdleBaseline:
    """The stored baseline of one host and device `key` (e.g. `cpu`, `gpu0`) under `folder`.
    `max_age_s` 0: never reused. `label` names the run that stores it; `alone`: this run is alone."""

    def __init__(self, folder: str | Path, key: str, max_age_s: float, label: str, alone: bool):
        self.path = Path(folder) / "idle" / f"{socket.gethostname()}-{key}.json"  # apart from bpfree.overlap's records
        self.max_age_s, self.label, self.alone = float(max_age_s), label, alone

    def reusable(self, signature: dict) -> dict | None:
        """The stored record with its age in seconds (`age_s`), or None where there is none to
        reuse: no file (or unreadable), another signature, older than `max_age_s`, from the future
        (a clock step), or not measured alone for an alone run."""
        if self.max_age_s <= 0:
            return None
        try:
            rec = json.loads(self.path.read_text())
            age = time.time() - float(rec["measured_at"])
            rec["idle_w"] = dict(rec["idle_w"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if rec.get("signature") != signature or not 0 <= age <= self.max_age_s or (self.alone and not rec.get("alone")):
            return None
        return {**rec, "age_s": age}

    def obtain(self, signature: dict, measure: Callable[[], Idle]) -> Idle:
        """The stored baseline where it can be reused, else `measure()`'s, which is stored."""
        if (rec := self.reusable(signature)) is not None:
            return Idle(rec["idle_w"], rec["seconds"], rec)
        idle = measure()
        self.store(signature, idle.w, idle.seconds)
        return idle

    def store(self, signature: dict, idle_w: dict[str, float | None], seconds: float) -> None:
        """Record a baseline just measured: watts per component over `seconds` of idling."""
        io.write_json(self.path, {"idle_w": idle_w, "seconds": seconds, "signature": signature,
                                  "measured_at": time.time(), "measured_by": self.label, "alone": self.alone,
                                  "host": socket.gethostname()})

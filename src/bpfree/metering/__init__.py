"""Energy, time and memory of a training phase, through one measurement-window API that every
algorithm goes through identically (train.py):

    meter = Meter(device, country="FRA", idle_seconds=5, sample_hz=10)
    meter.start()        # idle-power baseline (if idle_seconds > 0), then the window opens
    ... meter.mark()     # after every epoch: cheap (a clock and, where they exist, counter reads)
    result = meter.stop()
    meter.epochs         # per-epoch seconds and joules, final (estimates apportioned by time)
    meter.trace_rows()   # the sampler's readings (a power trace on GPU / RAPL machines; empty if none)

Energy is kept per component (`gpu`, `cpu`, `dram`) with the method that produced it:

- `nvml-counter`  GPU total-energy counter (mJ), read at the window edges with the device synchronised;
- `nvml-power`    GPU power samples from the background sampler, integrated (trapezoid) — fallback;
- `rapl`          powercap `energy_uj` counters (package -> cpu, dram -> dram), wrap-around corrected;
- `estimate`      CodeCarbon's model, used only for a component without a counter.

A component that cannot be measured or estimated is reported as `None` with method `unavailable`,
never as 0 J. Emissions are derived from the energy with CodeCarbon's offline carbon intensity.

Beside these, `energy_board_j` is the quantity the original study reported, so that its figures
are compared with the column that measures the same thing: GPU board power polled every 0.2 s
(`nvmlDeviceGetPowerUsage`), trapezoid-integrated, GPU only, no idle subtraction (its
`src/utils/monitoring.py`; docs/field-algorithms.md, last section). Without a GPU power
reading it is `None`, "unavailable". A window too short to trust (fewer than 60 power samples, as
MLPerf's power rules ask, or under 1 s of counter readings) is named in `energy_window_warning`.

Every source becomes a cumulative-energy curve (time, joules); the energy between two edges is the
difference of the curve at those times. Counters are read at each edge, so their edge values are
exact; power samples and CodeCarbon readings are interpolated linearly, i.e. apportioned by time.

Layout, one job a module, each importing only those before it (tests/test_layout.py); this module
re-exports what callers use:

- `curves`    the cumulative-energy curves, `board_energy`, and the names every module shares;
- `readers`   one reader per source: RAPL (`Rapl`), NVML (`Gpu`), CodeCarbon (`codecarbon_tracker`);
- `methods`   `choose_methods` picks the method of each component (`bpfree doctor` calls it too); one
              class per energy source owns its label, curves and reads (`GpuCounter`, `GpuPower`,
              `RaplSource`, `Estimate`);
- `memory`    the window's peak memory (`PeakMemory`);
- `summary`   pure functions of the readings (`component_energy`, `board_summary`, `window_warning`,
              `epoch_records`, `trace_rows`, ...);
- `baseline`  the idle baseline stored per host and device and reused by later runs (`IdleBaseline`,
              `Idle`, `idle_record`);
- `segments`  a resumed run's totals (`Segments`: the killed processes' time and energy added);
- `meter`     `Sampler`, the background thread, and `Meter`, which opens the window and puts these
              together.

Device synchronisation and NVML: bpfree.device.
"""
from __future__ import annotations

from bpfree.metering.baseline import Idle, IdleBaseline, idle_record
from bpfree.metering.curves import (COMPONENTS, KWH, MIB, ORIGINAL_STUDY_HZ, UNAVAILABLE, Curve, PowerCurve,
                                    board_energy, energy_between)
from bpfree.metering.memory import PeakMemory, reset_peak_rss, rss_mib, tensor_mib
from bpfree.metering.meter import Meter, Sampler
from bpfree.metering.methods import Estimate, GpuCounter, GpuPower, RaplSource, choose_methods
from bpfree.metering.readers import POWERCAP, Gpu, Rapl, codecarbon_tracker, open_gpu, rapl_domains
from bpfree.metering.segments import Segments
from bpfree.metering.summary import (MIN_COUNTER_S, MIN_POWER_SAMPLES, board_summary, component_energy, emissions,
                                     energy_record, epoch_records, gpu_summary, idle_watts, method_label, trace_rows,
                                     window_warning)

__all__ = [
    "COMPONENTS", "KWH", "MIB", "MIN_COUNTER_S", "MIN_POWER_SAMPLES", "ORIGINAL_STUDY_HZ", "POWERCAP", "UNAVAILABLE",
    "Curve", "Estimate", "Gpu", "GpuCounter", "GpuPower", "Idle", "IdleBaseline", "Meter", "PeakMemory", "PowerCurve",
    "Rapl", "RaplSource", "Sampler", "Segments", "board_energy", "board_summary", "choose_methods",
    "codecarbon_tracker", "component_energy", "emissions", "energy_between", "energy_record", "epoch_records",
    "gpu_summary", "idle_record", "idle_watts", "method_label", "open_gpu", "rapl_domains", "reset_peak_rss", "rss_mib",
    "tensor_mib", "trace_rows", "window_warning",
]

"""The meter's arithmetic and labels with a fake powercap tree and a fake NVML; the estimate path and
`bpfree doctor` on this machine (no counters)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from bpfree import device, doctor, metering
from bpfree.metering import Curve, Meter, PowerCurve, Rapl, rapl_domains

MAX_UJ = 262_143_328_850


# ---- fakes ------------------------------------------------------------------------------------------

def make_powercap(root: Path) -> Path:
    """package-0 (with core and dram subzones) and psys, in the sysfs layout."""
    zones = {"intel-rapl:0": "package-0", "intel-rapl:0:0": "core", "intel-rapl:0:1": "dram",
             "intel-rapl:1": "psys"}
    for zone, name in zones.items():
        z = root / zone
        z.mkdir(parents=True)
        (z / "name").write_text(name + "\n")
        (z / "energy_uj").write_text("0\n")
        (z / "max_energy_range_uj").write_text(f"{MAX_UJ}\n")
    return root


def set_uj(root: Path, zone: str, value: int) -> None:
    (root / zone / "energy_uj").write_text(f"{value}\n")


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """Stand-in for the pynvml calls the meter makes: a GPU drawing `watts` constantly since
    construction, with or without the total-energy counter."""

    def __init__(self, watts: float = 200.0, counter: bool = True):
        self.watts, self.counter, self.t0, self.inits = watts, counter, time.perf_counter(), 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlSystemGetDriverVersion(self):
        return b"999.99"

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return ("gpu", 0)

    def nvmlDeviceGetName(self, h):
        return b"Fake H100"

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.counter:
            raise FakeNVMLError("Not Supported")
        return int(1e9 + self.watts * (time.perf_counter() - self.t0) * 1e3)  # mJ since "driver load"

    def nvmlDeviceGetPowerUsage(self, h):
        return int(self.watts * 1e3)  # mW

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("U", (), {"gpu": 87, "memory": 40})()

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"used": 1536 * 2**20, "total": 80 * 2**30})()


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# ---- curves -------------------------------------------------------------------------------------

def test_curve_interpolates_and_extrapolates_with_last_power():
    c = Curve()
    for t, e in [(0.0, 0.0), (1.0, 10.0), (3.0, 30.0)]:
        c.add(t, e)
    assert c.at(-1) == 0.0
    assert c.at(0.5) == pytest.approx(5.0)
    assert c.at(2.0) == pytest.approx(20.0)
    assert c.at(4.0) == pytest.approx(40.0)  # 10 W continued past the last reading
    c.add(2.0, 99.0)  # out of order: ignored
    assert c.at(3.0) == 30.0


def test_power_curve_trapezoid():
    c = PowerCurve()
    c.add_power(0.0, 100.0)
    c.add_power(1.0, 200.0)
    c.add_power(3.0, 200.0)
    assert c.at(1.0) == pytest.approx(150.0, rel=1e-3)
    assert c.at(3.0) == pytest.approx(550.0)


# ---- RAPL ---------------------------------------------------------------------------------------

def test_rapl_domains_map_package_and_dram_only(tmp_path):
    doms = {d["name"]: d for d in rapl_domains(make_powercap(tmp_path))}
    assert doms["package-0"]["component"] == "cpu" and doms["dram"]["component"] == "dram"
    assert doms["core"]["component"] is None and doms["psys"]["component"] is None
    assert all(d["readable"] and d["max_uj"] == MAX_UJ for d in doms.values())
    assert rapl_domains(tmp_path / "absent") == [] and rapl_domains(None) == []


def test_rapl_counter_wrap_around(tmp_path):
    root = make_powercap(tmp_path)
    set_uj(root, "intel-rapl:0", MAX_UJ - 1_000_000)
    set_uj(root, "intel-rapl:0:1", 5_000_000)
    r = Rapl(root)
    assert r.components == ["cpu", "dram"]
    set_uj(root, "intel-rapl:0", 2_000_000)  # wrapped: 1 J before the wrap + 2 J after
    set_uj(root, "intel-rapl:0:1", 7_500_000)
    assert r.read() == pytest.approx({"cpu": 3.0, "dram": 2.5})
    set_uj(root, "intel-rapl:0", 4_000_000)
    assert r.read()["cpu"] == pytest.approx(5.0)


def test_unreadable_rapl_is_reported_not_used(tmp_path, monkeypatch):
    root = make_powercap(tmp_path)
    read = Path.read_text

    def root_only(self, *a, **kw):  # energy_uj is 0400 root on kernels patched for CVE-2020-8694
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return read(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", root_only)
    doms = rapl_domains(root)
    assert not any(d["readable"] for d in doms) and all("permission" in d["error"] for d in doms)
    assert Rapl(root).components == []


# ---- the meter with counters ---------------------------------------------------------------------

def test_meter_rapl_and_nvml_counter(tmp_path):
    root = make_powercap(tmp_path)
    set_uj(root, "intel-rapl:0", MAX_UJ - 1_000_000)
    nvml = FakeNVML(watts=250.0)
    m = Meter("cpu", powercap_root=root, nvml=nvml, gpu=0, codecarbon=False, sample_hz=50)
    m.start()
    spin(0.15)
    set_uj(root, "intel-rapl:0", 500_000)  # wrap: 1.5 J in epoch 1
    set_uj(root, "intel-rapl:0:1", 400_000)
    m.mark()
    spin(0.15)
    set_uj(root, "intel-rapl:0", 3_500_000)  # 3 J in epoch 2
    set_uj(root, "intel-rapl:0:1", 900_000)
    m.mark()
    r = m.stop()
    assert r["energy_method"] == "mixed: gpu=nvml-counter, cpu=rapl, dram=rapl"
    assert (r["energy_gpu_method"], r["energy_cpu_method"], r["energy_dram_method"]) == ("nvml-counter", "rapl", "rapl")
    assert r["energy_cpu_j"] == pytest.approx(4.5) and r["energy_dram_j"] == pytest.approx(0.9)
    assert r["energy_gpu_j"] == pytest.approx(250.0 * r["train_time_s"], rel=1e-3)
    assert r["energy_j"] == pytest.approx(r["energy_gpu_j"] + 5.4)
    e1, e2 = m.epochs
    assert e1["energy_cpu_j"] == pytest.approx(1.5) and e2["energy_cpu_j"] == pytest.approx(3.0)
    assert e2["cum_energy_j"] == pytest.approx(e1["energy_j"] + e2["energy_j"])
    assert e2["elapsed_s"] == pytest.approx(e1["window_s"] + e2["window_s"])
    assert r["gpu_util_mean_pct"] == 87 and r["gpu_device_memory_peak_mib"] == 1536
    assert r["meter_sample_hz"] == 50  # a GPU to trace: the configured rate
    assert r["power_trace"] == "power_trace.csv" and r["idle_power_w"] is None and r["idle_note"]
    rows = m.trace_rows()
    assert len(rows) >= 5 and rows[-1]["gpu_w"] == 250.0 and {"cpu_w", "dram_w"} <= set(rows[-1])
    assert r["emissions_kg"] is None and r["emissions_method"].startswith("unavailable")


def test_meter_nvml_power_fallback_and_idle_baseline():
    nvml = FakeNVML(watts=120.0, counter=False)
    m = Meter("cpu", powercap_root=None, nvml=nvml, gpu=0, codecarbon=False, sample_hz=20, idle_seconds=0.2)
    m.start()
    spin(0.3)
    m.mark()
    r = m.stop()
    g = r["energy_components"]["gpu"]
    assert g["method"] == "nvml-power"
    assert r["energy_method"] == "mixed: gpu=nvml-power, cpu=unavailable, dram=unavailable"
    assert g["j"] == pytest.approx(120.0 * r["train_time_s"], rel=1e-6)
    assert g["idle_w"] == pytest.approx(120.0) and r["idle_seconds"] == pytest.approx(0.2, abs=0.05)
    assert g["dynamic_j"] == pytest.approx(0.0, abs=1e-6)
    # cpu and dram have no counter and no estimate here: labelled, never 0 J
    for c in ("cpu", "dram"):
        assert r[f"energy_{c}_j"] is None and r[f"energy_{c}_method"] == "unavailable"
    assert r["energy_j"] == pytest.approx(g["j"])
    assert [row["phase"] for row in m.trace_rows()].count("idle") >= 2


def _baseline_run(folder: Path, watts: float, max_age_s: float = 600, alone: bool = False) -> tuple[dict, float]:
    """A metered window with a 0.4 s idle baseline stored under `folder` (GPU `gpu0`, fake NVML at
    `watts`): the result and the seconds `start()` took. The fake counter's readings and the meter's
    edges are taken at slightly different instants, so under load a measured baseline is off by a
    few tenths of a percent: the tests tell 100 W from 150 W at 1 %."""
    base = metering.IdleBaseline(folder, "gpu0", max_age_s, f"run at {watts:g} W", alone)
    m = Meter("cpu", powercap_root=None, nvml=FakeNVML(watts=watts), gpu=0, codecarbon=False, idle_seconds=0.4,
              idle_baseline=base)
    t0 = time.perf_counter()
    m.start()
    took = time.perf_counter() - t0
    spin(0.1)
    return m.stop(), took


def test_a_recent_idle_baseline_of_the_same_device_is_reused_without_idling(tmp_path):
    first, took = _baseline_run(tmp_path, 100.0)
    assert not first["idle_reused"] and first["idle_age_s"] is None and took >= 0.4
    assert first["idle_power_w"] == pytest.approx(100.0, rel=1e-2)
    stored = json.loads(next((tmp_path / "idle").glob("*-gpu0.json")).read_text())
    assert stored["idle_w"]["gpu"] == pytest.approx(100.0, rel=1e-2) and stored["measured_by"] == "run at 100 W"
    assert stored["signature"]["methods"]["gpu"] == "nvml-counter"
    second, took = _baseline_run(tmp_path, 150.0)  # its own idle would read 150 W: it does not measure
    assert second["idle_reused"] and 0 <= second["idle_age_s"] < 60 and took < 0.4
    assert second["idle_power_w"] == pytest.approx(100.0, rel=1e-2) and second["idle_measured_by"] == "run at 100 W"
    assert second["idle_seconds"] == pytest.approx(first["idle_seconds"])
    g = second["energy_components"]["gpu"]
    assert g["dynamic_j"] == pytest.approx(g["j"] - second["idle_power_w"] * second["train_time_s"])


@pytest.mark.parametrize("why, edit, max_age_s, alone", [
    ("stale", {"measured_at": time.time() - 1000}, 600, False),
    ("never reused", {}, 0, False),
    ("other methods", {"signature": {"methods": {"gpu": "nvml-power"}, "gpu": "Fake H100", "rapl": []}}, 600, False),
    ("not measured alone, for an alone run", {}, 600, True),
])
def test_an_idle_baseline_is_measured_again_when_it_cannot_be_reused(tmp_path, why, edit, max_age_s, alone):
    _baseline_run(tmp_path, 100.0)
    path = next((tmp_path / "idle").glob("*-gpu0.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    r, took = _baseline_run(tmp_path, 150.0, max_age_s, alone)
    assert not r["idle_reused"] and took >= 0.4, why
    assert r["idle_power_w"] == pytest.approx(150.0, rel=1e-2)  # its own 150 W, not the stored 100 W


def test_board_energy_is_the_original_studys_quantity():
    """5 Hz, trapezoid, no idle subtraction: from a 10 Hz trace every other sample is used."""
    trace = [(0.1 * i, 100.0 + 10.0 * i) for i in range(11)]  # 1 s, 100 -> 200 W linearly
    j, n = metering.board_energy(trace)
    assert n == 6 and j == pytest.approx(150.0)  # t = 0, 0.2, ..., 1.0: exact for a linear ramp
    j, n = metering.board_energy([(0.0, 50.0), (0.2, 50.0), (0.3, 80.0), (0.4, 50.0)])
    assert n == 3 and j == pytest.approx(20.0)  # the 0.3 s spike falls between two polls, as in the study
    assert metering.board_energy([(0.0, 50.0)]) == (None, 1)


def test_meter_reports_board_energy_beside_ours_and_flags_a_short_window():
    nvml = FakeNVML(watts=300.0)
    m = Meter("cpu", powercap_root=None, nvml=nvml, gpu=0, codecarbon=False, sample_hz=20, idle_seconds=0.1)
    m.start()
    spin(0.6)
    r = m.stop()
    assert r["energy_gpu_method"] == "nvml-counter"
    assert "original study" in r["energy_board_method"] and "5 Hz" in r["energy_board_method"]
    # no idle subtraction, first to last 5 Hz poll inside the window: a little under 300 W x the window
    assert 0.5 * 300 * r["train_time_s"] < r["energy_board_j"] <= 300.0 * r["train_time_s"] + 1e-6
    assert 2 <= r["energy_board_samples"] <= 4
    assert "too short to trust" in r["energy_window_warning"] and "energy_board_j" in r["energy_window_warning"]
    assert "gpu energy from" in r["energy_window_warning"]  # a 0.6 s window of the counter too


def test_long_enough_window_has_no_warning(monkeypatch):
    monkeypatch.setattr(metering.summary, "MIN_POWER_SAMPLES", 4)  # 60 polls at 5 Hz would take 12 s
    m = Meter("cpu", powercap_root=None, nvml=FakeNVML(watts=300.0), gpu=0, codecarbon=False, sample_hz=20)
    m.start()
    spin(1.3)
    r = m.stop()
    assert r["energy_board_samples"] >= 4 and r["energy_window_warning"] is None


def test_cooldown_pauses_before_the_idle_baseline():
    m = Meter("cpu", powercap_root=None, nvml=FakeNVML(), gpu=0, codecarbon=False, idle_seconds=0.1, cooldown_s=0.3)
    t0 = time.perf_counter()
    m.start()
    r = m.stop()
    idle_start = dict(m.edges)["idle_start"]
    assert idle_start - t0 >= 0.3 and m.samples[0][0] - t0 >= 0.3  # nothing sampled during the pause
    assert r["cooldown_s"] == 0.3 and r["idle_seconds"] == pytest.approx(0.1, abs=0.05)


def test_cpu_only_run_has_no_board_energy_and_says_why():
    m = Meter("cpu", powercap_root=None, nvml=None, codecarbon=False)
    m.start()
    r = m.stop()
    assert r["energy_board_j"] is None and r["energy_board_method"] == "unavailable: no GPU: a CPU-only run"


def test_gpu_without_nvml_is_unavailable_not_zero():
    class NoDriver(FakeNVML):
        def nvmlInit(self):
            raise FakeNVMLError("Driver Not Loaded")

    m = Meter("cpu", powercap_root=None, nvml=NoDriver(), gpu=0, codecarbon=False)
    m.start()
    r = m.stop()
    assert r["energy_gpu_j"] is None and r["energy_gpu_method"] == "unavailable"
    assert "gpu_name" not in r


def test_nothing_measurable_is_none_never_zero():
    m = Meter("cpu", powercap_root=None, nvml=None, codecarbon=False)
    m.start()
    m.mark()
    r = m.stop()
    assert r["energy_j"] is None and r["energy_method"] == "unavailable"
    assert m.epochs[0]["energy_j"] is None
    assert r["power_trace"] is None and r["power_trace_note"]


# ---- this machine: CodeCarbon estimates ----------------------------------------------------------

def test_no_counter_gives_labelled_nonzero_estimates(tmp_path):
    m = Meter("cpu", country="FRA", idle_seconds=0.3, powercap_root=tmp_path / "no-powercap", nvml=None,
              output_dir=str(tmp_path / "cc"), estimate_interval_s=0.25)
    m.start()
    for _ in range(3):
        spin(0.4)
        mark = m.mark()
        assert mark["energy_j"] is not None and mark["energy_j"] > 0
    r = m.stop()
    assert m.estimate.driven  # CodeCarbon's own timers replaced by the sampler (its 3.3 internals)
    # origin, start(), end of the idle phase, stop(), and the sampler's readings every 0.25 s (how
    # many of those fit in the 1.5 s depends on the machine's load: at least one, not a count)
    assert len(m.tracker.snapshots) >= 5
    if metering.reset_peak_rss():  # nothing to sample: the sampler wakes only to read CodeCarbon
        assert r["meter_sample_hz"] == pytest.approx(1 / m.estimate_interval_s)
    assert r["energy_method"] == "estimate"
    assert set(r["energy_components"]) == {"cpu", "dram"}
    for c in ("cpu", "dram"):
        assert r[f"energy_{c}_method"] == "estimate" and r[f"energy_{c}_j"] > 0
    assert r["energy_j"] > 0 and r["idle_power_w"] > 0 and r["energy_dynamic_j"] is not None
    for c in ("cpu", "dram"):  # cumulative energy never decreases, so no component idles below 0 W
        assert r["energy_components"][c]["idle_w"] >= 0
        e = m.curves[c].e
        assert all(b >= a for a, b in zip(e, e[1:]))
    assert r["emissions_kg"] > 0 and "derived" in r["emissions_method"] and "FRA" in r["emissions_method"]
    assert r["power_trace"] is None and "no power reading" in r["power_trace_note"]
    assert r["peak_memory_mib"] > 0 and r["peak_memory_method"]
    assert [e["energy_j"] > 0 for e in m.epochs] == [True] * 3
    # epochs are apportioned from the same curve as the total: they sum to at most the window
    assert sum(e["energy_j"] for e in m.epochs) <= r["energy_j"] + 1e-9
    json.dumps(r)  # everything the run records is JSON


# ---- doctor --------------------------------------------------------------------------------------

def test_doctor_with_fake_counters(tmp_path):
    info = doctor.probe(powercap_root=make_powercap(tmp_path), nvml=FakeNVML())
    assert info["methods"] == {"gpu": "nvml-counter", "cpu": "rapl", "dram": "rapl"}
    assert info["driver"] == "999.99" and info["gpus"][0]["name"] == "Fake H100"
    text = doctor.format_report(info)
    assert "energy counter (nvml-counter) yes" in text and "measured: gpu (nvml-counter), cpu (rapl)" in text


def test_doctor_on_this_machine_says_estimates_only(capsys):
    from bpfree.cli import main

    if metering.rapl_domains() or device.load_nvml() is not None:
        pytest.skip("this machine has power counters")
    main(["doctor"])
    out = capsys.readouterr().out
    assert "only CodeCarbon estimates are available" in out
    assert "cpu = estimate, dram = estimate" in out
    for name in ("torch", "codecarbon", "optuna", "snakemake", "pynvml", "NVIDIA driver"):
        assert name in out


@pytest.mark.parametrize("counter", [True, False])
@pytest.mark.parametrize("rapl", [True, False])
def test_doctor_and_a_run_choose_the_same_methods(tmp_path, counter, rapl):
    """One function (metering.choose_methods) decides for both: the doctor's verdict is what a run records."""
    root = make_powercap(tmp_path) if rapl else None
    info = doctor.probe(powercap_root=root, nvml=FakeNVML(counter=counter))
    m = Meter("cpu", powercap_root=root, nvml=FakeNVML(counter=counter), gpu=0, codecarbon=bool(info["codecarbon"]),
              output_dir=str(tmp_path / "cc"))
    m.start()
    r = m.stop()
    assert {c: r[f"energy_{c}_method"] for c in info["methods"]} == info["methods"] == m.methods
    assert info["methods"]["gpu"] == ("nvml-counter" if counter else "nvml-power")


def test_codecarbons_cpu_detection_is_paid_once_per_machine(tmp_path, monkeypatch):
    """py-cpuinfo's detection (a subprocess, ~1.2 s a run) answers from a per-machine file after the
    first run: the same dict CodeCarbon would have got, without detecting again."""
    import cpuinfo

    from bpfree.metering.readers import cache_cpu_detection

    calls = []
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: calls.append(1) or {"brand_raw": "Fake CPU 9000", "count": 2})
    path = cache_cpu_detection(tmp_path)
    assert calls == [1] and json.loads(path.read_text())["brand_raw"] == "Fake CPU 9000"
    assert cpuinfo.get_cpu_info() == {"brand_raw": "Fake CPU 9000", "count": 2} and calls == [1]
    # a later run (a fresh process: py-cpuinfo's own function again) reads the file
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: calls.append(1) or {"brand_raw": "detected again"})
    assert cache_cpu_detection(tmp_path) == path
    assert cpuinfo.get_cpu_info()["brand_raw"] == "Fake CPU 9000" and calls == [1]
    # a file that cannot be read is a detection paid again, not an error
    path.write_text("{not json")
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: calls.append(1) or {"brand_raw": "Fake CPU 9000"})
    cache_cpu_detection(tmp_path)
    assert calls == [1, 1] and json.loads(path.read_text())["brand_raw"] == "Fake CPU 9000"


def test_the_algorithms_own_memory_beside_the_process_peak():
    """tensor_mib counts each storage once (a view or a tensor named twice adds nothing); the
    window's RSS growth is what training added over the resident set at its start."""
    from bpfree.metering.memory import PeakMemory, tensor_mib

    w = torch.zeros(256, 1024)  # 1 MiB of float32
    state = {"net": {"w": w, "w_again": w, "row": w[0]}, "opt": [{"m": torch.zeros(512, 512)}], "step": 3}
    assert tensor_mib(state) == pytest.approx(2.0)
    peak = PeakMemory(torch.device("cpu"), sample_hz=10)
    peak.open()
    keep = torch.ones(64, 1024, 1024)  # 256 MiB, touched
    out = peak.result()
    assert out["rss_growth_mib"] == pytest.approx(out["peak_memory_mib"] - out["rss_at_start_mib"])
    assert 200 < out["rss_growth_mib"] < out["peak_memory_mib"]
    del keep


def test_diagnostic_intervals_are_taken_out_of_time_and_energy():
    """Exclusions (the meter's, around Algorithm.epoch_metrics): a 10 W curve over 10 s with 2 s of
    diagnostics gives 80 J and 8 s, per window and per epoch."""
    from bpfree.metering.curves import Curve, Exclusions, energy_between
    from bpfree.metering.summary import energy_record, epoch_records

    curve = Curve()
    for t in range(11):
        curve.add(float(t), 10.0 * t)
    clock = iter([2.0, 4.0])
    ex = Exclusions(lambda: next(clock))
    with ex.during():
        pass
    assert ex.intervals == [(2.0, 4.0)] and ex.seconds(0, 10) == 2.0 and ex.seconds(3, 10) == 1.0
    curves = ex.wrap({"cpu": curve})
    assert energy_between(curves["cpu"], 0, 10) == pytest.approx(80.0)
    assert energy_between(curves["cpu"], 3, 5) == pytest.approx(10.0)  # 3-4 out
    rec = energy_record(curves, {"cpu": "rapl"}, 0.0, 10.0, {"cpu": 1.0}, ex.seconds(0, 10))
    assert rec["train_time_s"] == 8.0 and rec["energy_j"] == pytest.approx(80.0) and rec["diagnostics_s"] == 2.0
    assert rec["energy_dynamic_j"] == pytest.approx(80.0 - 1.0 * 8)
    rows = epoch_records(curves, ["cpu"], 0.0, [5.0, 10.0], ex.seconds)
    assert [r["window_s"] for r in rows] == [3.0, 5.0] and rows[-1]["cum_energy_j"] == pytest.approx(80.0)

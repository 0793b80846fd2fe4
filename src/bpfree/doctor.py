"""`bpfree doctor`: which energy-measurement methods this machine offers, the device, and the
versions that matter. It probes the same readers the meter uses (metering.py), so what it says is
what a final run will record."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bpfree import metering

PACKAGES = {"torch": "torch", "codecarbon": "codecarbon", "optuna": "optuna", "snakemake": "snakemake",
            "pynvml": "nvidia-ml-py", "numpy": "numpy", "pandas": "pandas"}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe(powercap_root: str | Path | None = metering.POWERCAP, nvml: Any = "auto") -> dict:
    """Everything doctor reports, as a dict (tests pass a fake powercap tree and a fake NVML)."""
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                            "versions": {k: _version(v) for k, v in PACKAGES.items()},
                            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                            "driver": None, "gpus": [], "nvml": None}
    lib = metering.load_nvml(nvml)
    if lib is None:
        info["nvml"] = "absent"
        if nvml == "auto":
            try:
                import pynvml

                pynvml.nvmlInit()
            except ImportError:
                info["nvml"] = "absent: no pynvml module (package nvidia-ml-py)"
            except Exception as e:
                info["nvml"] = f"unusable: nvmlInit failed ({e}): no NVIDIA driver"
    else:
        try:
            info["driver"] = metering._text(lib.nvmlSystemGetDriverVersion())
        except Exception:
            pass
        try:
            n = lib.nvmlDeviceGetCount()
        except Exception as e:
            n, info["nvml"] = 0, f"present, device count failed: {e}"
        for i in range(n):
            try:
                g = metering.Gpu(lib, i)
                info["gpus"].append({"index": i, "name": g.name, "counter": g.counter, "power": g.power})
            except Exception as e:
                info["gpus"].append({"index": i, "error": str(e)})
        info["nvml"] = info["nvml"] or f"present, {n} device(s)"
    info["rapl"] = metering.rapl_domains(powercap_root)
    info["powercap_root"] = str(powercap_root)
    cc = _version("codecarbon")
    info["codecarbon"] = cc

    gpu0 = next((g for g in info["gpus"] if "error" not in g), None)
    rapl_ok = {d["component"] for d in info["rapl"] if d["readable"] and d["component"]}
    methods = {"gpu": None, "cpu": "rapl" if "cpu" in rapl_ok else "estimate" if cc else "unavailable",
               "dram": "rapl" if "dram" in rapl_ok else "estimate" if cc else "unavailable"}
    if gpu0 is not None:
        methods["gpu"] = "nvml-counter" if gpu0["counter"] else "nvml-power" if gpu0["power"] else "unavailable"
    info["methods"] = {k: v for k, v in methods.items() if v is not None}
    measured = [c for c, m in info["methods"].items() if m not in ("estimate", "unavailable")]
    info["verdict"] = ("only CodeCarbon estimates are available on this machine (no GPU energy counter, no "
                       "readable RAPL counter): every energy figure will be labelled `estimate`"
                       if not measured else
                       "measured: " + ", ".join(f"{c} ({info['methods'][c]})" for c in measured)
                       + ("; estimated: " + ", ".join(c for c, m in info["methods"].items() if m == "estimate")
                          if any(m == "estimate" for m in info["methods"].values()) else ""))
    info["peak_rss"] = ("VmHWM, reset at window start" if metering.reset_peak_rss()
                        else "sampled resident set (VmHWM reset unsupported)")
    return info


def format_report(info: dict) -> str:
    yes = {True: "yes", False: "no"}
    lines = ["bpfree doctor", "", "Energy measurement methods on this machine:"]
    if info["gpus"]:
        for g in info["gpus"]:
            if "error" in g:
                lines.append(f"  GPU {g['index']}: NVML error: {g['error']}")
            else:
                lines.append(f"  GPU {g['index']} ({g['name']}): energy counter (nvml-counter) {yes[g['counter']]}; "
                             f"power reading (nvml-power, power trace) {yes[g['power']]}")
    else:
        lines.append(f"  GPU energy counter: no (NVML {info['nvml']})")
    readable = [d for d in info["rapl"] if d["readable"]]
    if not info["rapl"]:
        lines.append(f"  RAPL counters: no (no powercap zones under {info['powercap_root']})")
    else:
        for d in info["rapl"]:
            use = f"-> {d['component']}" if d["component"] else "(not used: overlaps a package)"
            state = "readable" if d["readable"] else d["error"]
            lines.append(f"  RAPL {d['zone']} {d['name']}: {state} {use}")
        if not readable:
            lines.append("  RAPL counters: present but none readable")
    lines.append(f"  CodeCarbon estimate: {'yes (codecarbon ' + info['codecarbon'] + ')' if info['codecarbon'] else 'no (codecarbon not installed)'}")
    lines.append("  per component: " + ", ".join(f"{c} = {m}" for c, m in info["methods"].items()))
    lines.append(f"  => {info['verdict']}")
    lines.append(f"  peak memory on CPU: {info['peak_rss']}")
    lines += ["", "Device:",
              f"  CPU: {info['cpu']} ({info['cpu_count']} logical cores)",
              f"  CUDA available to torch: {yes[info['cuda_available']]}"
              + (f"; GPUs: {', '.join(g.get('name', '?') for g in info['gpus'])}" if info["gpus"] else ""),
              f"  platform: {info['platform']}", "", "Versions:",
              f"  python {info['python']}",
              f"  torch {info['versions']['torch']} (CUDA {info['torch_cuda'] or 'none: CPU build'})",
              f"  NVIDIA driver {info['driver'] or 'none'}"]
    lines += [f"  {k} {v or 'not installed'}" for k, v in info["versions"].items() if k != "torch"]
    return "\n".join(lines) + "\n"


def main(as_json: bool = False) -> None:
    info = probe()
    if as_json:
        import json

        print(json.dumps(info, indent=2, default=str))
    else:
        print(format_report(info), end="")

"""`bpfree doctor`: which energy-measurement methods this machine offers, the device, and the
versions that matter. It probes the same readers the meter uses (bpfree.metering) and picks the method
of each component with the meter's own `metering.choose_methods`, so what it says is what a final
run will record."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from bpfree import device, metering, provenance


NAMES = {"nvidia-ml-py": "nvidia-ml-py (pynvml)"}  # a distribution better known by its module's name


def gpus(nvml: Any = "auto") -> tuple[list[metering.Gpu | dict], str]:
    """Every GPU NVML lists (a Gpu, or {"index", "error"} where NVML fails on it) and NVML's state
    in words."""
    lib = device.load_nvml(nvml)
    if lib is None:
        return [], device.nvml_problem() if nvml == "auto" else "absent"
    try:
        n = lib.nvmlDeviceGetCount()
    except Exception as e:
        return [], f"present, device count failed: {e}"
    out: list[metering.Gpu | dict] = []
    for i in range(n):
        try:
            out.append(metering.Gpu(lib, i))
        except Exception as e:
            out.append({"index": i, "error": str(e)})
    return out, f"present, {n} device(s)"


def probe(powercap_root: str | Path | None = metering.POWERCAP, nvml: Any = "auto") -> dict:
    """Everything doctor reports, as a dict (tests pass a fake powercap tree and a fake NVML)."""
    import torch

    found, nvml_state = gpus(nvml)
    versions = provenance.versions()
    info: dict[str, Any] = {"python": versions.pop("python"), "platform": platform.platform(),
                            "cpu": device.cpu_model(), "cpu_count": os.cpu_count(),
                            "torch_cuda": versions.pop("torch_cuda"),
                            "versions": versions, "cuda_available": torch.cuda.is_available(),
                            "driver": device.nvidia_driver(nvml), "nvml": nvml_state,
                            "gpus": [g if isinstance(g, dict) else {"index": i, "name": g.name, "counter": g.counter,
                                                                    "power": g.power} for i, g in enumerate(found)]}
    info["rapl"] = metering.rapl_domains(powercap_root)
    info["powercap_root"] = str(powercap_root)
    info["codecarbon"] = versions["codecarbon"]
    gpu0 = next((g for g in found if not isinstance(g, dict)), None)
    rapl_ok = {d["component"] for d in info["rapl"] if d["readable"] and d["component"]}
    info["methods"] = metering.choose_methods(gpu0 is not None, gpu0, rapl_ok, bool(info["codecarbon"]))
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
    estimate = f"yes (codecarbon {info['codecarbon']})" if info["codecarbon"] else "no (codecarbon not installed)"
    lines.append(f"  CodeCarbon estimate: {estimate}")
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
    lines += [f"  {NAMES.get(k, k)} {v or 'not installed'}" for k, v in info["versions"].items() if k != "torch"]
    return "\n".join(lines) + "\n"


def main(as_json: bool = False) -> None:
    info = probe()
    if as_json:
        import json

        print(json.dumps(info, indent=2, default=str))
    else:
        print(format_report(info), end="")

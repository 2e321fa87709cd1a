"""Measuring on shared machines: device syncs, peak memory, waiting for a quiet machine, and what
to record about the hardware and the relaxation kernel with the numbers."""
import ctypes
import gc
import platform
import resource
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_memory(fn, device):
    """(bytes, method): peak memory added while fn() runs."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base, "cuda max_memory_allocated"
    try:  # hand freed heap back to the OS so the earlier runs' peaks do not hide this one's
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - base) * 1024, "peak RSS growth (VmHWM)"
    except (OSError, KeyError):
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, "ru_maxrss growth"


def runnable_others():
    """Processes other than this one ready to run right now (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1]) - 1
    except OSError:
        return None
    return None


def wait_quiet(seconds, max_wait, log):
    """On a shared machine, wait until nothing else has been runnable for `seconds` (sampled 5x a
    second), at most `max_wait` seconds; returns the seconds waited (None: gave up)."""
    if seconds <= 0 or runnable_others() is None:
        return 0.0
    t0 = time.perf_counter()
    calm_since = t0
    while time.perf_counter() - calm_since < seconds:
        if runnable_others() > 0:
            calm_since = time.perf_counter()
        if time.perf_counter() - t0 > max_wait:
            log(f"  (machine still busy after {max_wait:.0f} s: measuring anyway)")
            return None
        time.sleep(0.2)
    return time.perf_counter() - t0


def max_diff(a, b):
    return max((u.detach() - v.detach()).abs().max().item() for u, v in zip(a, b))


def hardware(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} ({len(names)} logical CPUs)" if names else platform.processor()
    except OSError:
        return platform.processor() or platform.machine()


def native_status(wanted: bool) -> str:
    """What relaxes the dense nets: recorded with the numbers."""
    if not wanted:
        return "off (torch ops)"
    from eqprop.kernels import build
    lib = build.load()
    return f"compiled: {build.origin()}" if lib is not None else f"unavailable, torch ops: {build.error()}"

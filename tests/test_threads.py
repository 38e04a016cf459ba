"""Where the CPU ops run their threads: torch's other threads one to a CPU, away from the
caller's, where the threads are as many as the caller's CPUs; the caller never held; nothing
held where there are CPUs to spare or when turned off. Each case runs in a fresh Python, whose torch
threads no earlier test has touched, and reads the threads' CPUs from /proc."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from unet_fast import threads
from unet_fast.ops import backends

pytestmark = pytest.mark.skipif(not backends.extension_loaded(), reason="the regions belong to the C++ extension")

CPUS = sorted(os.sched_getaffinity(0))


def run_fresh(code: str, **env: str) -> dict:
    """Runs `code` after a Winograd convolution (UNET_FAST_WINOGRAD=6) on as many torch threads as this process has CPUs
    (`threads` and `cpus` set beforehand); returns the JSON it prints last."""
    prelude = textwrap.dedent("""
        import json, os, subprocess, sys, torch
        from unet_fast import threads as placement
        from unet_fast.ops import conv3x3_bias_relu

        cpus = sorted(os.sched_getaffinity(0))

        def held_cpus():
            # {thread id: its CPUs} of every thread of this process but the calling one
            found = {}
            for tid in os.listdir("/proc/self/task"):
                if int(tid) != os.getpid():
                    found[int(tid)] = sorted(os.sched_getaffinity(int(tid)))
            return found

        torch.set_num_threads(len(cpus))
        x, w = torch.randn(1, 32, 130, 130), torch.randn(32, 32, 3, 3)
        conv3x3_bias_relu(x, w, torch.zeros(32), backend="cpu")
    """)
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, "UNET_FAST_WINOGRAD": "6", **env}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="one CPU: a region has one thread, nothing to place")


@needs_two_cpus
def test_a_region_holds_torchs_other_threads_one_to_a_cpu_and_never_the_caller():
    seen = run_fresh("""
        child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                               capture_output=True, text=True, check=True).stdout
        held = [c[0] for c in held_cpus().values() if len(c) == 1]
        print(json.dumps({"caller": sorted(os.sched_getaffinity(0)), "child": json.loads(child), "held": held,
                          "cpus": cpus, "pinned": placement.threads_pinned(), "plan": placement.placement_cpus()}))
    """)
    assert seen["pinned"] and seen["plan"] == seen["cpus"]
    assert seen["caller"] == seen["cpus"], "the calling thread keeps all its CPUs"
    assert seen["child"] == seen["cpus"], "so a process it starts inherits all of them"
    # torch's other threads of the region, each on a CPU of its own, leaving one for the caller
    held = seen["held"]
    assert len(held) == len(seen["cpus"]) - 1 and len(set(held)) == len(held) and set(held) <= set(seen["cpus"])


@needs_two_cpus
def test_unet_fast_pin_threads_0_leaves_the_threads_to_the_os():
    seen = run_fresh("""
        print(json.dumps({"held": [c for c in held_cpus().values() if len(c) < len(cpus)],
                          "pinned": placement.threads_pinned(), "plan": placement.placement_cpus()}))
    """, UNET_FAST_PIN_THREADS="0")
    assert seen == {"held": [], "pinned": False, "plan": []}


@needs_two_cpus
def test_pin_threads_false_stops_the_holding_for_the_next_regions():
    seen = run_fresh("""
        placement.pin_threads(False)
        plan_off = placement.placement_cpus()
        placement.pin_threads(True)
        print(json.dumps({"off": plan_off, "on": placement.placement_cpus()}))
    """)
    assert seen == {"off": [], "on": CPUS}


def test_threads_are_left_to_the_os_where_they_are_not_as_many_as_the_cpus():
    assert threads.placement_cpus(len(CPUS) + 1) == []
    assert threads.placement_cpus(1) == []
    if len(CPUS) > 2:
        assert threads.placement_cpus(2) == []


def test_a_bad_setting_is_named():
    result = subprocess.run([sys.executable, "-c", "from unet_fast import threads; threads.threads_pinned()"],
                            capture_output=True, text=True, env={**os.environ, "UNET_FAST_PIN_THREADS": "yes"},
                            timeout=300)
    assert result.returncode != 0
    assert "UNET_FAST_PIN_THREADS must be 0" in result.stderr and "'yes'" in result.stderr


@pytest.mark.parametrize("call, error", [
    (lambda: threads.pin_threads(1), TypeError),
    (lambda: threads.placement_cpus(0), ValueError),
    (lambda: threads.placement_cpus(2.0), ValueError),
])
def test_bad_arguments_raise_clear_errors(call, error):
    with pytest.raises(error, match="enabled|threads"):
        call()

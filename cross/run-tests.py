#!/usr/bin/env python3
"""Runs already-built cross test binaries under qemu-user, several at a time.

`cargo test --target T` runs one test binary after another. Under qemu many of ours spend most
of their wall time waiting (a fake BlueZ, a broker, a FHIR server, child agents, fsyncs), so one
binary at a time leaves the two cores of a CI machine half idle. This script takes the
`--message-format=json` output of `cargo test --no-run` for one or more targets, runs every test
binary the way cargo would (working directory = its package, the target's runner in front, the
same arguments after `--`), a few at a time, and prints one line per binary and a summary.

usage: run-tests.py --jobs N [--timeout S] --log-dir DIR \
         --build TARGET=RUNNER=BUILD.json [--build ...] -- [test args]

Retries (`--retries`, default 0; cross/test.sh passes 1): after the pool, the tests that failed
are run once more, alone (the binary with those test names and `--exact`; the whole binary when
it timed out or crashed before naming a failing test). A test that passes then is reported as
FLAKY with the log of its failure printed in full: under user-mode emulation on a loaded 2-core
machine, client timeouts and races between the agent and the test's own peers show up that the
native run (no retries) does not have. A test that fails again fails the run.

Exit status: 0 when every binary exited 0 (or every failing test passed its retry), 1
otherwise (each failing binary's log is printed).
"""

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

# The binaries that take longest under qemu (seconds under aarch64 qemu, 2026-12-07): started
# first so that the short ones fill the gaps at the end instead of one long one running alone.
LONG_FIRST = [
    "ble", "store_kill", "mqtt_ingest", "e2e", "store_e2e", "vitalgate", "serial", "export",
    "uplink_rotation", "ops", "store_durability", "uplink_outcomes", "uplink_oauth",
    "uplink_hostile", "audit", "omh_mapping", "check_uplink", "store_recovery",
]


def binaries(build_json):
    """(name, kind, executable, package dir) of each test binary in a cargo JSON build log."""
    out = []
    with open(build_json, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            m = json.loads(line)
            if m.get("reason") != "compiler-artifact" or not m.get("executable"):
                continue
            if not m.get("profile", {}).get("test"):
                continue
            kind = m["target"]["kind"][0]
            out.append((m["target"]["name"], kind, m["executable"],
                        os.path.dirname(m["manifest_path"])))
    return out


def order_key(name):
    return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=1500, help="seconds per test binary")
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--retries", type=int, default=0,
                    help="times a failing test is run again, alone, after the pool")
    ap.add_argument("--build", action="append", required=True,
                    help="TARGET=RUNNER=BUILD_JSON")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    test_args = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    os.makedirs(a.log_dir, exist_ok=True)

    jobs = []
    for spec in a.build:
        target, runner, build_json = spec.split("=", 2)
        for name, kind, exe, pkg in binaries(build_json):
            label = f"{target}:{os.path.basename(pkg)}:{name}" + ("" if kind == "test" else f"({kind})")
            argv = shlex.split(runner)
            # Tests that spawn the vitalgate binary run it through the same qemu
            # (tests/common/mod.rs), and a binfmt-launched child finds the target's libraries
            # through QEMU_LD_PREFIX: both belong to the target, not to this process.
            env = dict(os.environ, VITALGATE_EXEC_WRAPPER=runner)
            if "-L" in argv[:-1]:
                env["QEMU_LD_PREFIX"] = argv[argv.index("-L") + 1]
            jobs.append((order_key(name), label, argv + [exe] + test_args, pkg, env))
    jobs.sort(key=lambda j: j[0])
    if not jobs:
        print("run-tests.py: no test binaries in the build logs", file=sys.stderr)
        return 1

    def run(job, suffix="", extra=()):
        _, label, argv, cwd, env = job
        log = os.path.join(a.log_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", label) + suffix + ".log")
        t0 = time.monotonic()
        with open(log, "w", encoding="utf-8") as f:
            p = subprocess.Popen(list(argv) + list(extra), cwd=cwd, env=env, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = p.wait(timeout=a.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                rc = "timeout"
        secs = time.monotonic() - t0
        text = open(log, encoding="utf-8", errors="replace").read()
        passed = sum(int(n) for n in re.findall(r"test result: \w+\. (\d+) passed", text))
        failed = sum(int(n) for n in re.findall(r"; (\d+) failed", text))
        names = re.findall(r"^test (\S+) \.\.\. FAILED$", text, flags=re.M)
        line = f"{label}{' (retry)' if suffix else ''}: {passed} passed, {failed} failed, exit {rc}, {secs:.0f}s"
        print(line, flush=True)
        return label, rc, passed, failed, log, names

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        results = list(pool.map(run, jobs))
    by_label = {j[1]: j for j in jobs}
    bad, flaky = [], []
    for label, rc, passed, failed, log, names in results:
        if rc == 0:
            continue
        ok = False
        for attempt in range(1, a.retries + 1):
            # The failing tests alone, by exact name; the whole binary if none was named
            # (a timeout, a crash, a failure outside a test).
            extra = (names + ["--exact"]) if names and rc != "timeout" else []
            r = run(by_label[label], suffix=f".retry{attempt}", extra=extra)
            if r[1] == 0 and r[2] >= max(1, len(names)):
                ok = True
                break
        (flaky if ok else bad).append((label, rc, log, names))
    for label, rc, log, names in flaky:
        print(f"\n===== FLAKY: {label} (exit {rc}, then passed alone: {', '.join(names) or 'the whole binary'}): {log}", flush=True)
        sys.stdout.write(open(log, encoding="utf-8", errors="replace").read()[-20000:])
    for label, rc, log, _ in bad:
        print(f"\n===== {label} (exit {rc}): {log}", flush=True)
        sys.stdout.write(open(log, encoding="utf-8", errors="replace").read()[-20000:])
    total_p = sum(r[2] for r in results)
    total_f = sum(r[3] for r in results)
    print(f"run-tests.py: {len(results)} binaries, {total_p} passed, {total_f} failed "
          f"({len(flaky)} binaries with tests that passed on a retry alone: "
          f"{', '.join(f[0] for f in flaky) or 'none'}), {len(bad)} binaries failed, "
          f"{time.monotonic() - t0:.0f}s with {a.jobs} at a time")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run a command and report its peak memory, sampled every 50 ms from /proc/PID/status:
peak RssAnon (memory the process itself holds: heap, stacks) and peak VmHWM (all resident pages,
with pages of mapped files, which are the kernel's page cache and can be dropped at any time).

    python3 bench/peak_rss.py CMD ARGS...    -> prints "anon_mb=... hwm_mb=... rc=... seconds=..."
"""
import subprocess
import sys
import time

t0 = time.time()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
anon = hwm = 0
while p.poll() is None:
    try:
        for line in open(f"/proc/{p.pid}/status"):
            k, _, v = line.partition(":")
            if k == "RssAnon":
                anon = max(anon, int(v.split()[0]))
            elif k == "VmHWM":
                hwm = max(hwm, int(v.split()[0]))
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    time.sleep(0.05)
print(f"anon_mb={anon / 1024:.0f} hwm_mb={hwm / 1024:.0f} rc={p.returncode} seconds={time.time() - t0:.1f}")

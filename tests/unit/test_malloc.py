"""The daemon's malloc settings: freed block buffers are reused, not faulted in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A readahead window's worth of 16 MiB buffers, live at once, then freed; twice. Prints the
# page faults of the second burst: 32,768 (one per 4 KiB page) when freed memory went back
# to the kernel, ~0 when it was kept for reuse.
BURSTS = textwrap.dedent(
    """
    import os, resource, sys
    from streamfs._malloc import keep_block_buffers
    if sys.argv[1] == "tuned":
        assert keep_block_buffers()
    def burst():
        live = [os.urandom(1) * (16 << 20) for _ in range(8)]
        del live
    burst()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    burst()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def second_burst_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", BURSTS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_buffers_freed_after_a_burst_are_reused_without_page_faults() -> None:
    pages = 8 * 16 * 1024 * 1024 // 4096
    assert second_burst_faults("default") > pages // 2  # the cost the settings remove
    assert second_burst_faults("tuned") < pages // 100

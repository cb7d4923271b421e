"""pipeline.features.allocator: a batch-sized buffer comes from the reusable heap, not from a mapping of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# In a child process (mallopt changes the whole process): allocate a 64 MiB array and report how many bytes glibc
# holds in mmap'd chunks while it is alive (mallinfo2().hblkhd: such chunks are unmapped again when freed).
SCRIPT = textwrap.dedent(
    """
    import ctypes, sys
    import numpy as np
    from pipeline.features.allocator import keep_freed_buffers

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "tuned":
        assert keep_freed_buffers()
    batch = np.ones(16 << 20, dtype=np.float32)  # 64 MiB, like an image batch's activations
    print(libc.mallinfo2().hblkhd)
    """
)


def _mapped_bytes(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_buffers_serves_batch_sized_buffers_from_the_heap() -> None:
    assert _mapped_bytes("default") >= 64 << 20  # glibc maps it on its own: unmapped (and faulted in again) per batch
    assert _mapped_bytes("tuned") < 1 << 20  # from the heap, where a freed batch is reused by the next one

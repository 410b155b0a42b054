"""A testing hook: kill the training process with SIGKILL at a chosen point, to test crash-safe resume.

Set the environment variable ``HYPERGEN_FAULT`` to one or more comma-separated points:

    after_step:N         after step N is complete (logged, and checkpointed if N is a checkpoint step)
    during_checkpoint:N  while writing step N's checkpoint: some files are in the temporary folder, but not
                         the manifest, and the folder has not been renamed into place
    during_log:N         in the middle of writing step N's line of metrics.jsonl (half a line is written)

It is read by the trainer and does nothing when unset. It exists only for tests (``tests/training/test_reliability.py``);
never set it in a real run.
"""

from __future__ import annotations

import os
import signal

ENV = "HYPERGEN_FAULT"


def fault_requested(point: str, step: int) -> bool:
    wanted = os.environ.get(ENV, "")
    return f"{point}:{step}" in {item.strip() for item in wanted.split(",")}


def maybe_kill(point: str, step: int) -> None:
    """SIGKILL this process (no cleanup, no flushing of Python buffers) when ``HYPERGEN_FAULT`` asks for it."""
    if fault_requested(point, step):
        os.kill(os.getpid(), signal.SIGKILL)

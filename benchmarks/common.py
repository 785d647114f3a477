"""Shared benchmark plumbing: machine facts and updating one section of docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
HEADER = """# Benchmarks

Each section is written by the script named in its command; rerun the command to refresh it.
All numbers are from the machine named in the section. Timings need an otherwise idle machine:
on 2 cores, a second busy process slows small torch operations by an order of magnitude.
"""


class Clock:
    """Wall-clock marks; on CUDA each waits for the queued work first."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        """``time.perf_counter()`` once the device has finished what it was given."""
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for the block (None leaves them)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine() -> str:
    """One line naming the CPU, cores, torch build and threads."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )


def command_line() -> str:
    """The exact command that ran this benchmark, relative to the repository root."""
    script = Path(sys.argv[0]).resolve().relative_to(ROOT)
    return " ".join([".venv/bin/python", str(script), *map(shlex.quote, sys.argv[1:])])


def write_section(section: str, block: str) -> None:
    """Replace (or append) the block between ``section``'s markers in docs/benchmarks.md."""
    from fedit.io import atomic_write_text

    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else HEADER
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    atomic_write_text(DOC, text)


def section_block(section: str, title: str, body: str) -> str:
    """The section as docs/benchmarks.md holds it: markers, title, this command and machine."""
    return (
        f"<!-- {section}:start -->\n## {title}\n\n```bash\n{command_line()}\n```\n\n"
        f"Machine: {machine()}\n\n{body.strip()}\n<!-- {section}:end -->"
    )


def record_from(path: Path) -> None:
    """Put a section that a run wrote elsewhere (a GPU machine's results folder) into the docs."""
    block = path.read_text(encoding="utf-8").strip()
    match = re.match(r"<!-- (\w+):start -->", block)
    if match is None:
        raise SystemExit(f"{path}: not a section (no start marker)")
    write_section(match.group(1), block)
    print(block)


def record(section: str, title: str, body: str) -> None:
    """Replace (or append) the section ``section`` of docs/benchmarks.md, atomically."""
    block = section_block(section, title, body)
    write_section(section, block)
    print(block)

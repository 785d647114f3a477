"""Run every benchmark in turn; each rewrites its own section of docs/benchmarks.md.

.venv/bin/python benchmarks/run_all.py      (or: make bench)
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["padding.py", "train_overhead.py", "memory.py", "quickstart.py"]

if __name__ == "__main__":
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script)], check=True)

"""Run every benchmark script in sequence and write ``benchmarks/RESULTS.md``.

Each ``bench_*.py`` in this folder (``bench_env.py`` included when present) runs
once, in its own process, one after the other (the machine is shared; nothing
runs in parallel). The markdown tables and result lines each script prints go
into RESULTS.md under the command that produced them, with the machine (CPU
model from ``lscpu``, core count), Python, numba, numpy, python-control and
gcc versions, the git commit and the date. A script that fails is reported as
failed, with the end of its stderr, and the others still run.

Run from the repository root: ``python benchmarks/run_all.py``
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Fixed order first, then any other bench_*.py.
ORDER = ["bench_vs_control.py", "bench_batch_vs_c.py", "bench_env.py", "bench_startup.py"]
TIMEOUT = 600   # s per script


def scripts() -> list[Path]:
    found = {p.name: p for p in HERE.glob("bench_*.py")}
    ordered = [found.pop(name) for name in ORDER if name in found]
    return ordered + [found[name] for name in sorted(found)]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def versions() -> str:
    parts = [f"Python {platform.python_version()}"]
    for mod in ("numba", "numpy", "control", "scipy"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            parts.append(f"{mod} not installed")
    try:
        gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True,
                             check=True).stdout.strip()
        parts.append(f"gcc {gcc}")
    except (OSError, subprocess.CalledProcessError):
        parts.append("gcc not found")
    return ", ".join(parts)


def git_head() -> str:
    try:
        return subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report_lines(stdout: str) -> list[str]:
    """The markdown a script printed: its ``##`` sections with their tables and
    result lines; the plain preamble (versions, compiler commands) goes into a
    code block before it."""
    lines = stdout.rstrip().splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("## ")), None)
    if first is None:   # no markdown at all: keep the whole output verbatim
        return ["```", *lines, "```"]
    pre, body = lines[:first], lines[first:]
    out = ["```", *pre, "```", ""] if any(s.strip() for s in pre) else []
    # Sections become level-3 headings under the script's own heading.
    return out + [("#" + line) if line.startswith("## ") else line for line in body]


def main() -> None:
    py = Path(sys.executable)
    env = dict(os.environ)
    started = datetime.datetime.now(datetime.UTC)
    sections, summary = [], []
    for path in scripts():
        rel = path.relative_to(ROOT)
        cmd = f"python {rel}"
        print(f"running {cmd} ...", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([str(py), str(path)], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=TIMEOUT)
            ok, stdout, stderr = proc.returncode == 0, proc.stdout, proc.stderr
            status = "ok" if ok else f"FAILED (exit {proc.returncode})"
        except subprocess.TimeoutExpired as exc:
            ok, status = False, f"FAILED (timeout {TIMEOUT} s)"
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        wall = time.perf_counter() - t0
        print(f"  {status}, {wall:.1f} s", flush=True)
        summary.append(f"| `{cmd}` | {status} | {wall:.1f} |")
        body = [f"## `{rel.name}`", "", f"`{cmd}` ({status}, {wall:.1f} s)", ""]
        body += report_lines(stdout) if stdout.strip() else []
        if not ok:
            tail = stderr.strip().splitlines()[-20:]
            body += ["", "stderr (last lines):", "", "```", *tail, "```"]
        sections.append("\n".join(body))

    cmdline = shlex.join(["python", str(Path(__file__).relative_to(ROOT))])
    head = [
        "# Benchmark results",
        "",
        f"Written by `{cmdline}` on {started:%Y-%m-%d %H:%M} UTC; every script ran once, "
        "one after the other.",
        "",
        f"- Machine: {cpu_model()}, {os.cpu_count()} CPUs (shared: absolute times move "
        "10-20 % between runs; compare the ratios within one run)",
        f"- Software: {versions()}",
        f"- Commit: {git_head()}",
        "",
        "| command | status | wall s |",
        "|---|---|---:|",
        *summary,
        "",
    ]
    text = "\n".join(head) + "\n" + "\n\n".join(sections) + "\n"
    (HERE / "RESULTS.md").write_text(text)
    print(f"wrote {(HERE / 'RESULTS.md').relative_to(ROOT)}")


if __name__ == "__main__":
    main()

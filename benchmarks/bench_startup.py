"""Start-up cost: cold vs warm numba cache, each case in a fresh Python process.

Cold: ``NUMBA_CACHE_DIR`` is a new, empty temporary directory, so the first
``simulate`` (and ``sweep``) compiles its kernels and writes them there.
Warm: the same directory again, so the kernels load from the cache. Python's
own bytecode cache and the OS file cache are warm in both cases.

Each child process reports its own ``import ctrlsim`` and first-call times
(``time.perf_counter``); the parent adds the wall time of the whole process,
interpreter start-up included. Best of 2 (2 fresh cache directories for cold).
``python -m ctrlsim --help`` and the real ``ctrlsim compare decel -c relu -c
leaky:0.1 -c linear`` console script (a full CLI job, cold: it compiles ``rollout``)
are timed too when the package has a CLI.

Run: ``python benchmarks/bench_startup.py``
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from installed import byte_compile

REPEATS = 2
COMPARE = ["compare", "decel", "-c", "relu", "-c", "leaky:0.1", "-c", "linear"]

_PRELUDE = "import time; t0 = time.perf_counter(); import ctrlsim; t1 = time.perf_counter()\n"
_REPORT = ("import json; print(json.dumps({'import': t1 - t0, "
           "'call': time.perf_counter() - t1}))\n")
CASES = {
    "import ctrlsim": _PRELUDE + _REPORT,
    "import + first simulate": _PRELUDE + (
        "from ctrlsim import Reference, Scenario\n"
        "ctrlsim.simulate(Scenario(reference=Reference([(0.0, 2.0)]), duration=10.0))\n"
    ) + _REPORT,
    "import + first sweep (3 rows)": _PRELUDE + (
        "from ctrlsim import Reference, Scenario\n"
        "ctrlsim.sweep(Scenario(reference=Reference([(0.0, 2.0)]), duration=10.0),"
        " {'alpha': [0.0, 0.5, 1.0]})\n"
    ) + _REPORT,
}


def run(args: list[str], cache_dir: str) -> tuple[float, dict | None]:
    """Wall time of a child process and the JSON it printed last (if any)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    try:
        return wall, json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return wall, None


def console_script() -> str | None:
    """The installed ``ctrlsim`` console script of this interpreter's environment."""
    beside = os.path.join(os.path.dirname(sys.executable), "ctrlsim")
    return beside if os.access(beside, os.X_OK) else shutil.which("ctrlsim")


def has_cli() -> bool:
    spec = importlib.util.find_spec("ctrlsim")
    pkg_dir = os.path.dirname(spec.origin)
    return os.path.exists(os.path.join(pkg_dir, "cli.py"))


def top_imports(n: int = 6) -> list[tuple[str, float]]:
    """Top-level packages by cumulative import time (``python -X importtime``)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ctrlsim"],
                          capture_output=True, text=True, check=True)
    totals = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        name = name.strip()
        if "." not in name and not name.startswith("_"):
            totals[name] = max(totals.get(name, 0.0), int(cumulative) / 1e6)
    return sorted(totals.items(), key=lambda kv: -kv[1])[:n]


def main() -> None:
    byte_compile()
    cases = {name: [sys.executable, "-c", code] for name, code in CASES.items()}
    if has_cli():
        cases["python -m ctrlsim --help"] = [sys.executable, "-m", "ctrlsim", "--help"]
        script = console_script()
        if script:
            cases["CLI `ctrlsim " + " ".join(COMPARE) + "`"] = [script, *COMPARE]
        else:
            print("`ctrlsim` console script not found: skipping the CLI compare job")
    else:
        print("ctrlsim/cli.py not found: skipping `python -m ctrlsim --help`")

    baseline = []
    results: dict[tuple[str, str], list[tuple[float, dict | None]]] = {}
    with tempfile.TemporaryDirectory(prefix="ctrlsim_bench_startup_") as tmp:
        for trial in range(REPEATS):
            baseline.append(run([sys.executable, "-c", "pass"], tmp)[0])
            cache = os.path.join(tmp, f"cache{trial}")
            os.mkdir(cache)
            # Each case is run cold in its own fresh directory so no case
            # benefits from another's compilation; then warm from that one.
            for i, (name, args) in enumerate(cases.items()):
                case_cache = os.path.join(cache, f"case{i}")
                os.mkdir(case_cache)
                for state in ("cold", "warm"):
                    results.setdefault((name, state), []).append(run(args, case_cache))

    print(f"python {sys.version.split()[0]} ({sys.executable}); "
          f"empty interpreter (`python -c pass`): best {min(baseline):.3f} s")
    print(f"\n## Start-up: cold vs warm numba cache (best of {REPEATS}, fresh processes)\n")
    print("wall = whole child process; import / first call = measured inside the child; "
          "cold = fresh empty `NUMBA_CACHE_DIR`, warm = the same directory again.\n")
    print("| case | cache | wall s | import s | first call s | all wall s |")
    print("|---|---|---:|---:|---:|---|")
    for (name, state), runs in results.items():
        best_wall, best_info = min(runs, key=lambda r: r[0])
        imp = f"{min(r[1]['import'] for r in runs):.3f}" if best_info else "-"
        call = (f"{min(r[1]['call'] for r in runs):.3f}"
                if best_info and name != "import ctrlsim" else "-")
        walls = " ".join(f"{r[0]:.2f}" for r in runs)
        print(f"| {name} | {state} | {best_wall:.3f} | {imp} | {call} | {walls} |")

    print("\n| case | cold s | warm s | cold / warm |")
    print("|---|---:|---:|---:|")
    for name in cases:
        cold = min(r[0] for r in results[(name, "cold")])
        warm = min(r[0] for r in results[(name, "warm")])
        print(f"| {name} | {cold:.2f} | {warm:.2f} | {cold / warm:.2f}x |")

    print("\nslowest top-level imports under `import ctrlsim` (python -X importtime, "
          "cumulative, one run):")
    for name, secs in top_imports():
        print(f"  {name:<20} {secs:.3f} s")


if __name__ == "__main__":
    main()

"""The dead-ReLU experiment: ReLU vs Leaky ReLU hidden units from negative biases.

Two MLPs (hidden 16,16) are trained by imitation of the scenario's own PI
controller, from the same initial weights with hidden biases drawn from
N(-6, 1), on the same minibatches; only the hidden activation differs. Prints a
markdown table (dead fraction and loss before/after, closed-loop cost) and
writes ``plots/<scenario>-dead-relu.png``.

Usage: ``python examples/dead_relu.py [SCENARIO] [--seed N]`` (default ``decel``).
"""

import argparse
import re
from pathlib import Path

import ctrlsim
from ctrlsim import learn
from ctrlsim.cli import dead_relu_table
from ctrlsim.plotting import dead_units_plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="decel")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sc = ctrlsim.load_scenario(args.scenario)
    results = learn.dead_relu_experiment(sc, seed=args.seed)
    print(dead_relu_table(results))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", sc.name).strip("._")[:80] or "scenario"
    path = Path("plots") / f"{safe}-dead-relu.png"
    path.parent.mkdir(exist_ok=True)
    dead_units_plot(results, title=f"{sc.name}: imitation from negative biases, "
                    "hidden 16,16").savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()

"""`tgrow scaling ladder`: growth's saving across compute budgets, with controls and intervals.

    tgrow scaling ladder --out runs/ladder-stdlib                         # the embedded stdlib corpus
    tgrow scaling ladder --corpus brown.txt --label brown --out runs/ladder-brown
    tgrow scaling ladder --out runs/ladder-stdlib --seeds 0,1,2,3,4       # more seeds; finished runs kept
    tgrow scaling ladder --out runs/ladder-stdlib --phase grid            # the IsoFLOP grid and its law only

First an IsoFLOP grid on the corpus gives its compute-optimal law N_opt(C) (Approach 2); then at every
budget ("rung") the target is the compute-optimal size and scratch, every plan and each plan's small-only
control train at every seed and budget fraction (`tgrow compare` per rung, under OUT/rungs/). Writes
OUT/summary.json, OUT/summary.md and OUT/multiplier_vs_compute.png. Resumable: rerun the same command.
Fit and extrapolate the multiplier with `tgrow scaling growth --ladder OUT`.
"""

from __future__ import annotations

import argparse
import warnings

from transformer_grow.cli.flags import ConfigFlags
from transformer_grow.io import check_directory_path
from transformer_grow.ladder.config import LadderConfig

LADDER_FLAGS = ConfigFlags(LadderConfig, "ladder")
PHASES = {"all": ("grid", "rungs"), "grid": ("grid",)}


def add_ladder_command(sub) -> None:
    p = sub.add_parser("ladder", help="growth's saving at several compute budgets, each with a compute-optimal "
                                      "target measured on the corpus (resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", metavar="DIR", required=True, help="output directory (resumable)")
    p.add_argument("--phase", choices=tuple(PHASES), default="all",
                   help="grid: the IsoFLOP grid and its law only; all: then every rung (default)")
    LADDER_FLAGS.add_to(p)
    p.set_defaults(func=run_ladder_command)


def run_ladder_command(args) -> int:
    from transformer_grow.ladder.run import run_ladder
    from transformer_grow.plans.timing import GrowthTimingWarning

    config = LadderConfig(**LADDER_FLAGS.given(args))
    config.validate()
    check_directory_path(args.out, "--out")
    print(f"tgrow scaling ladder: {config.label}, budgets {', '.join(f'{c:.3g}' for c in config.budgets)} FLOPs, "
          f"plans {', '.join(config.plans)}, seeds {','.join(map(str, config.seeds))}, output {args.out}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrowthTimingWarning)  # the presets' plans clamp G_stack's rule by design
        summary = run_ladder(config, args.out, phases=PHASES[args.phase])
    if summary is not None:
        print(f"summary: {args.out}/summary.json, {args.out}/summary.md")
    return 0 if summary is not None or args.phase == "grid" else 1

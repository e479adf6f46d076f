"""Throughput of `lmforge prepare` (data.prepare.prepare) in MB of UTF-8 text per second.

    .venv/bin/python benchmarks/prepare_throughput.py [--source python-stdlib]
        [--tokenizer PATH] [--workers 1 2] [--repeats 3] [--append]

Prepares the source with the GPT-2 tokenizer (shared/data/tokenizers/gpt2) into a fresh temporary
directory for each run, alternating worker counts (side by side, so background load hits both
alike), and reports the median of the repeats. Prints a table; --append adds it to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quickstart import REPO, machine  # noqa: E402

from lmforge.config import DataConfig  # noqa: E402
from lmforge.data.prepare import prepare  # noqa: E402
from lmforge.data.readers import iter_documents  # noqa: E402

GPT2 = REPO.parent / "shared" / "data" / "tokenizers" / "gpt2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="python-stdlib")
    parser.add_argument("--tokenizer", default=str(GPT2))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args()
    megabytes = sum(len(d.text.encode()) for d in iter_documents(args.source)) / 1e6
    times: dict[int, list[float]] = {w: [] for w in args.workers}
    tokens = 0
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for workers in args.workers:
                directory = Path(tmp) / f"w{workers}-{repeat}"
                config = DataConfig(
                    source=args.source, tokenizer=args.tokenizer, dir=str(directory)
                )
                config.workers = workers
                start = time.perf_counter()
                prepare(config, progress=False)
                times[workers].append(time.perf_counter() - start)
                index = json.loads((directory / "index.json").read_text())
                tokens = sum(s["tokens"] for v in index["splits"].values() for s in v)
    rows = [
        ("date", datetime.date.today().isoformat()),
        ("machine", machine()),
        (
            "source",
            f"{args.source} ({megabytes:.1f} MB UTF-8, {tokens:,} tokens, tokenizer {Path(args.tokenizer).name})",
        ),
    ]
    for workers, runs in times.items():
        median = statistics.median(runs)
        rows.append(
            (
                f"workers={workers}: s (median of {len(runs)}) / MB/s / tokens/s",
                f"{median:.2f} / {megabytes / median:.2f} / {tokens / median:,.0f}",
            )
        )
    table = "\n".join(["| prepare throughput | value |", "|---|---|"])
    table += "\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    print(table)
    if args.append:
        section = (
            "\n## Prepare throughput (issue: data at scale)\n\n"
            "`.venv/bin/python benchmarks/prepare_throughput.py --append`: `prepare()` on the "
            "source with the GPT-2 tokenizer, end to end (reading, tokenizing, writing shards; "
            "worker start-up included), worker counts run alternately.\n\n" + table + "\n"
        )
        with open(REPO / "BENCHMARKS.md", "a") as out:
            out.write(section)


if __name__ == "__main__":
    main()

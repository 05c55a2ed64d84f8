"""`python -m maepp.tools.bench table RESULTS.jsonl`: docs/performance.md's speed table from a results file.

A results file holds `bench step` JSON lines and, from benchmarks/peer.sh, the official
release's (`"peer"` lines), each tagged with the `run` it came from. maepp's rows are compared
with the peer's at the same batch in the same run only: timings of different runs on a shared
machine differ by a few percent.
"""

import json

from absl import app


def read_results(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _settings(row: dict) -> str:
    if "peer" in row:
        return "official release, " + " + ".join(
            ["bf16 autocast" if row["amp"] == "bf16" else "float32"]
            + ["SDPA"] * row["sdpa"]
            + ["torch.compile"] * row["compile"]
        )
    overrides = {k: v for k, v in row["variant"].items() if k != "batch_size"}
    settings = [f"maepp {row['dtype']}", f"attention {overrides.pop('model.attention', row.get('attention', 'xla'))}"]
    return ", ".join(settings + [f"{k}={v}" for k, v in overrides.items()])


def speed_table(rows: list) -> str:
    """Markdown: one row per timed program, with its ratio to the peer of the same run and batch."""
    peers = {(r.get("run"), r["batch"]): r["clips_per_s"] for r in rows if "peer" in r}
    lines = [
        "| run | program | batch | ms / step | clips / s | MFU | vs peer, same run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            continue
        batch = r["batch"] if "peer" in r else r["global_batch"]
        step_ms = r["step_s"] * 1e3 if "peer" in r else r["step_ms"]
        mfu = "" if "peer" in r or r["mfu"] is None else f"{r['mfu']:.1%}"
        peer = peers.get((r.get("run"), batch))
        ratio = "" if "peer" in r or peer is None else f"{r['clips_per_s'] / peer:.2f}x"
        lines.append(
            f"| {r.get('run', '')} | {_settings(r)} | {batch} | {step_ms:.1f} | {r['clips_per_s']:,.0f} | "
            f"{mfu} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("name one or more results files (benchmarks/results/*.jsonl)")
    print(speed_table([row for path in argv[1:] for row in read_results(path)]))

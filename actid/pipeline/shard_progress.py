"""Progress of a sweep run as several shard processes: one overall bar plus one line per shard.

Shards do not draw bars (two processes' bars would fight over one terminal line). Each shard
prints status lines (:class:`ShardReporter`); the parent reads every shard's output
(:class:`ShardMonitor`), draws the bars, and passes any other output through, prefixed by the shard.
"""

from __future__ import annotations

import json
import threading
import time

from tqdm.auto import tqdm

TAG = "\x1eactid-progress "
"""Prefix of a status line (the record-separator character keeps it apart from ordinary output)."""


class ShardReporter:
    """Shard side: report run starts, steps (at most every ``interval`` seconds) and run ends."""

    def __init__(self, interval: float = 1.0):
        self.interval, self.last = interval, 0.0

    def _send(self, **event) -> None:
        print(TAG + json.dumps(event), flush=True)

    def start(self, run: str, total: int) -> None:
        self._send(event="start", run=run, total=total)

    def step(self, step: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval or step == total:
            self.last = now
            self._send(event="step", step=step, total=total)

    def end(self, run: str, outcome: str) -> None:
        self._send(event="end", run=run, outcome=outcome)


class ShardMonitor:
    """Parent side: read the shards' output streams and draw the bars."""

    def __init__(self, n_shards: int, n_runs: int, desc: str):
        self.lock = threading.Lock()
        self.overall = tqdm(total=n_runs, desc=desc, unit="run", position=0, dynamic_ncols=True)
        self.shards = [tqdm(total=1, desc=f"shard {i}: starting", position=i + 1, leave=False, dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
                       for i in range(n_shards)]

    def follow(self, shard: int, stream) -> threading.Thread:
        """Read one shard's merged stdout/stderr in a thread."""
        thread = threading.Thread(target=self._read, args=(shard, stream), daemon=True)
        thread.start()
        return thread

    def _read(self, shard: int, stream) -> None:
        for line in stream:
            line = line.rstrip("\n")
            with self.lock:
                if line.startswith(TAG):
                    self._event(shard, json.loads(line[len(TAG):]))
                elif line.strip():
                    tqdm.write(f"[shard {shard}] {line.rstrip()}")

    def _event(self, shard: int, event: dict) -> None:
        bar = self.shards[shard]
        if event["event"] == "start":
            bar.reset(total=event["total"])
            bar.set_description_str(f"shard {shard}: {event['run']}")
        elif event["event"] == "step":
            bar.update(event["step"] - bar.n)
        elif event["event"] == "end":
            self.overall.update(1)
            self.overall.set_postfix_str(f"last: {event['run']} ({event['outcome']})")
            bar.set_description_str(f"shard {shard}: idle")

    def close(self) -> None:
        for bar in self.shards:
            bar.close()
        self.overall.close()

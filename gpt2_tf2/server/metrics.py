"""The server's counters, gauges and histograms, written in Prometheus' text exposition format
(version 0.0.4: `# HELP`, `# TYPE`, one sample per line, histograms as cumulative `_bucket{le}`
lines with `_sum` and `_count`). Thread-safe: the engine's thread and the request handlers both
record. No client library: the format is a page of text."""

from __future__ import annotations

import bisect
import threading

PREFIX = "gpt2_tf2"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, count in zip((*self.buckets, "+Inf"), self.counts):
            total += count
            out.append(f'{name}_bucket{{le="{bound}"}} {total}')
        return out + [f"{name}_sum {self.sum:.6f}", f"{name}_count {total}"]


class Metrics:
    """What /metrics shows. `gauges` is called at each scrape for the live values (queue
    depth, busy slots)."""

    def __init__(self, gauges=None):
        self._lock = threading.Lock()
        self.requests = {}  # HTTP status -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.first_token = Histogram()
        self.per_token = Histogram()
        self.gauges = gauges or (lambda: {})

    def request(self, status: int) -> None:
        with self._lock:
            self.requests[status] = self.requests.get(status, 0) + 1

    def tokens(self, prompt: int = 0, completion: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def latency(self, first_token: float | None = None, per_token: float | None = None) -> None:
        with self._lock:
            if first_token is not None:
                self.first_token.observe(first_token)
            if per_token is not None:
                self.per_token.observe(per_token)

    def text(self) -> str:
        with self._lock:
            lines = _help("requests_total", "counter", "Requests answered, by HTTP status.")
            for status, count in sorted(self.requests.items()):
                lines.append(f'{PREFIX}_requests_total{{status="{status}"}} {count}')
            for name, value, what in (
                ("prompt_tokens_total", self.prompt_tokens, "Prompt tokens read."),
                ("completion_tokens_total", self.completion_tokens, "Tokens generated."),
            ):
                lines += _help(name, "counter", what) + [f"{PREFIX}_{name} {value}"]
            for name, hist, what in (
                ("time_to_first_token_seconds", self.first_token, "From arrival to first token."),
                ("time_per_output_token_seconds", self.per_token, "Between a sequence's tokens."),
            ):
                lines += _help(name, "histogram", what) + hist.lines(f"{PREFIX}_{name}")
        for name, (value, what) in self.gauges().items():
            lines += _help(name, "gauge", what) + [f"{PREFIX}_{name} {value}"]
        return "\n".join(lines) + "\n"


def _help(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {PREFIX}_{name} {text}", f"# TYPE {PREFIX}_{name} {kind}"]

"""The server's Prometheus metrics (served at /metrics).

Each engine has its own registry, so that several servers in one process (the tests) do not
collide in prometheus_client's global one. The engine thread updates them; prometheus_client's
metrics are thread-safe.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self._totals = (0, 0)  # prompt tokens, cached tokens (for the hit rate)
        self.requests = Counter(
            "lmforge_requests", "Rows finished, by finish reason (one per prompt and choice)",
            ["finish_reason"], registry=registry,
        )  # fmt: skip
        self.rejected = Counter(
            "lmforge_rejected_requests", "Requests refused with 429 (queue full)", registry=registry
        )
        self.prompt_tokens = Counter(
            "lmforge_prompt_tokens", "Prompt tokens of admitted rows", registry=registry
        )
        self.generated_tokens = Counter(
            "lmforge_generation_tokens", "Tokens generated", registry=registry
        )
        self.cached_tokens = Counter(
            "lmforge_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache",
            registry=registry,
        )  # fmt: skip
        self.cache_hit_rate = Gauge(
            "lmforge_prefix_cache_hit_rate",
            "Fraction of all prompt tokens served from the prefix cache so far",
            registry=registry,
        )
        self.cache_bytes = Gauge(
            "lmforge_prefix_cache_bytes", "Memory held by the prefix cache", registry=registry
        )
        self.queue_depth = Gauge(
            "lmforge_queue_depth", "Rows waiting for a batch slot", registry=registry
        )
        self.running = Gauge(
            "lmforge_running_rows", "Rows being prefilled or decoded", registry=registry
        )
        self.ttft = Histogram(
            "lmforge_time_to_first_token_seconds", "From arrival to the first generated token",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.inter_token = Histogram(
            "lmforge_inter_token_latency_seconds", "Between two tokens of one row",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "lmforge_request_duration_seconds", "From arrival to the row's last token",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip

    def count_prompt(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.cached_tokens.inc(cached_tokens)
        self._totals = (self._totals[0] + prompt_tokens, self._totals[1] + cached_tokens)
        if self._totals[0]:
            self.cache_hit_rate.set(self._totals[1] / self._totals[0])

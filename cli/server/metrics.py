"""GET /metrics: llama-server's Prometheus metrics (`llamacpp:` prefix), read from the engine when scraped."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class _EngineCollector:
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        engine, stats = self.engine, self.engine.stats
        yield CounterMetricFamily("llamacpp:prompt_tokens", "Number of prompt tokens processed.",
                                  value=stats.prompt_tokens_total)
        yield CounterMetricFamily("llamacpp:tokens_predicted", "Number of generation tokens processed.",
                                  value=stats.tokens_predicted_total)
        yield CounterMetricFamily("llamacpp:requests", "Number of generation requests finished.",
                                  value=stats.requests_total)
        yield GaugeMetricFamily("llamacpp:requests_processing", "Number of requests processing.",
                                value=len(engine.running))
        yield GaugeMetricFamily("llamacpp:requests_deferred", "Number of requests deferred.",
                                value=engine.queued())
        yield GaugeMetricFamily("llamacpp:kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.",
                                value=sum(len(seq.history) for seq in engine.slots) / engine.model.n_ctx)
        yield CounterMetricFamily("llamacpp:n_decode", "Number of decode steps (one batch each).",
                                  value=stats.decode_steps)


def metrics_text(engine) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EngineCollector(engine))
    return generate_latest(registry)

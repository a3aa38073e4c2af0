"""Prometheus metrics of every store and topic registry, read when scraped.

Needs the official client library: ``pip install "tornadose[metrics]"``
(``prometheus_client``); importing :mod:`tornadose` never does. Serve them with
:class:`MetricsHandler`::

    app = tornado.web.Application([
        (r"/ticks/sse", EventSource, {"store": ticks}),
        (r"/metrics", tornadose.metrics.MetricsHandler),
    ])

Every store and :class:`~tornadose.topics.TopicRegistry` alive is one ``name`` label
(``QueueStore(name="ticks")``; by default its class in lower case, numbered from the
second: ``queuestore``, ``queuestore_2``...). Series never carry a topic or a
subscriber, so 10,000 topics are still one set of series per registry. Counters are read
from ``stats()`` at scrape time; nothing is added per delivery. The one exception is
``tornadose_fanout_seconds``: once metrics are installed, each fan-out pass (one per
event-loop turn with something to send) costs two clock reads and a bucket increment.

Series (``name`` label on all but ``tornadose_info``):

=====================================  =======  ==============================================
``tornadose_subscribers``              gauge    subscribers now (a registry: connections)
``tornadose_messages_total``           counter  messages submitted
``tornadose_deliveries_total``         counter  messages written, summed over subscribers
``tornadose_writes_total``             counter  socket writes carrying them
``tornadose_disconnects_total``        counter  by ``reason``: ``client`` (went away),
                                                ``lapped`` (fell off the history),
                                                ``timed_out`` (socket full past
                                                ``write_timeout``), ``revoked``
                                                (``disconnect()``), ``closed``
                                                (``close()``/``remove()``)
``tornadose_resumes_total``            counter  Last-Event-ID resumptions by ``outcome``:
                                                ``exact``, or ``gap`` (a gap notice)
``tornadose_rejected_total``           counter  refused at ``max_subscribers`` (or by the
                                                handler, within the descriptor headroom)
``tornadose_refused_total``            counter  refusals of the process by ``cause``
                                                (``open-files headroom``, also those shed
                                                at accept; ``max_subscribers``;
                                                ``request rate``); no ``name`` label
``tornadose_retained_messages``        gauge    messages in the history now
``tornadose_retained_bytes``           gauge    bytes of frames in the history now
``tornadose_max_lag_messages``         gauge    messages the furthest-behind subscriber
                                                has yet to receive
``tornadose_fanout_seconds``           histo    duration of one fan-out pass
``tornadose_info``                     info     ``backend`` (cython or python), ``version``
=====================================  =======  ==============================================
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from tornado.web import RequestHandler

from .core import instruments as _instruments
from .transport import refusals

__all__ = ["DISCONNECT_REASONS", "MetricsHandler", "TornadoseCollector", "install"]

#: The ``reason`` label values of ``tornadose_disconnects_total``.
DISCONNECT_REASONS = ("client", "lapped", "timed_out", "revoked", "closed")
_BOUNDS = [repr(bound) for bound in _instruments.PASS_BUCKETS] + ["+Inf"]
# (family, stats() key) of the series that are one number per store or registry.
_ONE_NUMBER = (
    ("messages", "messages"),
    ("deliveries", "delivered"),
    ("writes", "writes"),
    ("rejected", "rejected"),
    ("retained", "retained"),
    ("retained_bytes", "retained_bytes"),
    ("max_lag", "max_lag"),
)


class TornadoseCollector(Collector):
    """Reads every live store and registry when the registry it is in is collected."""

    def __init__(self) -> None:
        # "client" disconnects are derived (all disconnects minus those with a known
        # reason); a subscriber dropped for a known reason is counted there at once but
        # leaves a moment later, so the difference may dip: never report it lower.
        self._client_seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        for name, instrumented in _instruments.live():
            stats = instrumented.stats()
            labels = [name]
            families["subscribers"].add_metric(
                labels, stats.get("connections", stats["subscribers"])
            )
            for family, key in _ONE_NUMBER:
                families[family].add_metric(labels, stats[key])
            known = {reason: stats.get(reason, 0) for reason in DISCONNECT_REASONS[1:]}
            with self._lock:
                client = max(self._client_seen.get(name, 0),
                             stats["disconnected"] - sum(known.values()))
                self._client_seen[name] = client
            disconnects = families["disconnects"]
            disconnects.add_metric([name, "client"], client)
            for reason, count in known.items():
                disconnects.add_metric([name, reason], count)
            families["resumes"].add_metric([name, "exact"], stats["resumed"])
            families["resumes"].add_metric([name, "gap"], stats["gaps"])
            times = instrumented._pass_times
            if times is not None:
                cumulative, buckets = 0, []
                for bound, count in zip(_BOUNDS, times.buckets):
                    cumulative += count
                    buckets.append((bound, cumulative))
                families["fanout"].add_metric(labels, buckets, times.sum)
        for cause, count in refusals.counts().items():
            families["refused"].add_metric([cause], count)
        yield from families.values()

    @staticmethod
    def _families() -> dict[str, Metric]:
        from ._version import __version__
        from .core.backend import BACKEND as backend

        info = InfoMetricFamily("tornadose", "tornadose: the fan-out backend and version.")
        info.add_metric([], {"backend": backend, "version": __version__})
        return {
            "info": info,
            "subscribers": GaugeMetricFamily(
                "tornadose_subscribers",
                "Subscribers now (for a topic registry: connections).", labels=["name"]),
            "messages": CounterMetricFamily(
                "tornadose_messages", "Messages submitted.", labels=["name"]),
            "deliveries": CounterMetricFamily(
                "tornadose_deliveries",
                "Messages written to subscribers, summed over subscribers.", labels=["name"]),
            "writes": CounterMetricFamily(
                "tornadose_writes", "Socket writes that carried the deliveries.",
                labels=["name"]),
            "disconnects": CounterMetricFamily(
                "tornadose_disconnects", "Subscribers that left, by reason.",
                labels=["name", "reason"]),
            "resumes": CounterMetricFamily(
                "tornadose_resumes",
                "Subscribers that came with a Last-Event-ID: resumed exactly, or given a "
                "gap notice.", labels=["name", "outcome"]),
            "rejected": CounterMetricFamily(
                "tornadose_rejected", "Subscribers refused at max_subscribers.",
                labels=["name"]),
            "refused": CounterMetricFamily(
                "tornadose_refused", "Refusals of this process, by cause.", labels=["cause"]),
            "retained": GaugeMetricFamily(
                "tornadose_retained_messages", "Messages in the history now.", labels=["name"]),
            "retained_bytes": GaugeMetricFamily(
                "tornadose_retained_bytes", "Bytes of frames in the history now.",
                labels=["name"]),
            "max_lag": GaugeMetricFamily(
                "tornadose_max_lag_messages",
                "Messages the furthest-behind subscriber has yet to receive.", labels=["name"]),
            "fanout": HistogramMetricFamily(
                "tornadose_fanout_seconds", "Duration of one fan-out pass.", labels=["name"]),
        }


_installed: weakref.WeakKeyDictionary[CollectorRegistry, TornadoseCollector] = (
    weakref.WeakKeyDictionary()
)
_install_lock = threading.Lock()


def install(registry: CollectorRegistry = REGISTRY) -> TornadoseCollector:
    """Register the tornadose collector with ``registry`` (once; later calls return the
    same collector) and start timing fan-out passes. Returns the collector.

    :class:`MetricsHandler` calls it on its first request; call it at startup so that
    ``tornadose_fanout_seconds`` covers the passes before the first scrape too."""
    with _install_lock:
        collector = _installed.get(registry)
        if collector is None:
            collector = _installed[registry] = TornadoseCollector()
            registry.register(collector)
        _instruments.enable_timing()
        return collector


class MetricsHandler(RequestHandler):
    """Serves ``registry`` (by default prometheus_client's global one, with the
    tornadose collector installed) in the format the scraper asks for: OpenMetrics when
    its ``Accept`` header names ``application/openmetrics-text``, else Prometheus text
    format 0.0.4, as prometheus_client's own exporters do. ``?name[]=<metric>``
    restricts the answer to those metrics."""

    def initialize(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        install(registry)

    def get(self) -> None:
        encoder, content_type = choose_encoder(self.request.headers.get("Accept", ""))
        names = self.get_query_arguments("name[]")
        registry: Any = self.registry.restricted_registry(names) if names else self.registry
        self.set_header("Content-Type", content_type)
        self.write(encoder(registry))

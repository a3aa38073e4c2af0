"""The scenarios: each function runs one contender once and returns a flat record.

* :func:`throughput` -- burst (``per_iter=100``) and per-message (``per_iter=1``)
  delivery of M messages to N subscribers; also the N sweep.
* :func:`topics` -- a market feed: N connections, each subscribed to K of T topics,
  M ticks (tick j to topic j % T), ``per_iter`` per loop iteration.
* :func:`latency` -- M messages paced at R per second to N subscribers.
* :func:`idle_memory` -- server RSS per idle subscriber.
* :func:`stalled` -- server RSS while M messages flow past S subscribers that never
  read, and one that does.

Every record says whether every connection got every frame (``complete``), in
order on the sampled connections (``disorder``), and why not (``notes``).
"""

import socket
import time

from bench.harness import BenchError, Session

US = 1e6


def _wait_report(session, client, deadline):
    return client.report(deadline - time.monotonic())


def _get(session, path, timeout):
    """GET a trigger route; False if it did not answer within ``timeout`` s."""
    try:
        session.get(path, timeout=max(1.0, timeout))
        return True
    except (TimeoutError, socket.timeout):
        return False


def _delivery_fields(report, t0, cpu, client_cpu0, expected):
    delivered = report["total"]
    wall = (report["t_last"] - t0) if report["t_last"] else None
    client_cpu = report["cpu_s"] - client_cpu0 if client_cpu0 is not None else None
    notes = []
    if not report["complete"]:
        notes.append(f"incomplete: {delivered}/{expected} frames, per connection "
                     f"min {report['min']} max {report['max']} of {report['expect']}")
    if report["error_count"]:
        notes.append(f"{report['error_count']} connection errors: {'; '.join(report['errors'])}")
    if report["sampled_disorder"]:
        notes.append(f"{report['sampled_disorder']} out-of-order/missing frames "
                     "on sampled connections")
    if report.get("sampled_reordered"):
        notes.append(f"{report['sampled_reordered']} frames on sampled connections arrived "
                     "after a later tick of another topic (allowed: order is per topic)")
    return {
        "delivered": delivered,
        "expected": expected,
        "complete": report["complete"] and not report["error_count"],
        "frames_min": report["min"],
        "frames_max": report["max"],
        "errors": report["error_count"],
        "disorder": report["sampled_disorder"],
        "server_cpu_s": cpu,
        "us_per_delivery": cpu / delivered * US if delivered else None,
        "wall_s": wall,
        "deliveries_per_s": delivered / wall if wall else None,
        "client_cpu_s": client_cpu,
        "client_busy": client_cpu / wall if wall and client_cpu is not None else None,
        "latency": report["latency"],
        "notes": notes,
    }


def throughput(contender, transport, n, m, per_iter, size=90, cap=120.0):
    """Server CPU per delivery for M messages, ``per_iter`` per loop iteration."""
    with Session(contender, transport) as session:
        client = session.client(n, m, timeout=cap + 600, sample_every=max(1, n // 10))
        session.wait_subscribers(n)
        time.sleep(0.2)
        cpu0, client_cpu0 = session.cpu(), client.cpu()
        t0 = time.monotonic()
        answered = _get(session, f"/burst?messages={m}&per_iter={per_iter}&size={size}", cap)
        report = _wait_report(session, client, t0 + cap)
        cpu = session.cpu() - cpu0
        stats = session.stats() if contender in ("cython", "python") else {}
        problems = session.problems()
    record = {"n": n, "m": m, "per_iter": per_iter, "size": size, "cap_s": cap,
              **_delivery_fields(report, t0, cpu, client_cpu0, n * m),
              "server_stats": stats, "server_log_problems": problems,
              "info": session.info}
    if not answered or not report["complete"]:
        record["partial"] = True
        record["notes"].append(f"capped at {cap:.0f} s: "
                               f"{'still submitting; ' if not answered else ''}"
                               "µs/delivery is server CPU over the frames delivered by then")
    return record


def topics(contender, transport, n, m, per_iter, n_topics=500, per_conn=50, size=90,
           cap=120.0):
    """Server CPU per delivery for a market feed: N connections, connection i subscribed
    to the ``per_conn`` topics ``(i + (n_topics // per_conn) * k) % n_topics`` (its own
    URL, ``?topics=S000,S010,...``); M ticks, tick j to topic ``S%03d % (j % n_topics)``,
    ``per_iter`` per loop iteration. Every connection expects ``per_conn * m / n_topics``
    frames; ``writes_per_delivery`` is the server's ``writes / delivered``."""
    if n_topics % per_conn or m % n_topics:
        raise BenchError(f"topics: {per_conn} topics per connection must divide {n_topics} "
                         f"topics, which must divide {m} ticks")
    expect = per_conn * m // n_topics
    with Session(contender, transport, ["--topics", str(n_topics)]) as session:
        client = session.client(n, expect, timeout=cap + 600, sample_every=max(1, n // 10),
                                topics=n_topics, topics_per_conn=per_conn)
        session.wait_subscribers(n)
        time.sleep(0.2)
        stats0 = session.stats()
        cpu0, client_cpu0 = session.cpu(), client.cpu()
        t0 = time.monotonic()
        answered = _get(session, f"/burst?messages={m}&per_iter={per_iter}&size={size}", cap)
        report = _wait_report(session, client, t0 + cap)
        cpu = session.cpu() - cpu0
        stats = session.stats()
        problems = session.problems()
    record = {"n": n, "m": m, "per_iter": per_iter, "size": size, "cap_s": cap,
              "topics": n_topics, "topics_per_conn": per_conn, "expect_per_conn": expect,
              "subscribers_per_topic": n * per_conn / n_topics,
              **_delivery_fields(report, t0, cpu, client_cpu0, n * expect),
              "server_stats": stats, "server_log_problems": problems, "info": session.info,
              "connections_at_start": stats0.get("connections")}
    # writes and deliveries of the run (the counters before it are subtracted: the
    # connections' set-up writes nothing through the fan-out, but be exact)
    delivered = stats.get("delivered", 0) - stats0.get("delivered", 0)
    writes = stats.get("writes", 0) - stats0.get("writes", 0)
    record["server_delivered"] = delivered if "delivered" in stats else None
    record["server_writes"] = writes if "writes" in stats else None
    record["writes_per_delivery"] = writes / delivered if delivered and "writes" in stats else None
    record["sampled_reordered"] = report.get("sampled_reordered")
    if "delivered" in stats and delivered != record["delivered"]:
        record["notes"].append(f"the server counted {delivered} deliveries, "
                               f"the client {record['delivered']} frames")
    if stats.get("lapped"):
        record["notes"].append(f"{stats['lapped']} connections lapped (disconnected)")
    if not answered or not report["complete"]:
        record["partial"] = True
        record["notes"].append(f"capped at {cap:.0f} s: "
                               f"{'still submitting; ' if not answered else ''}"
                               "µs/delivery is server CPU over the frames delivered by then")
    return record


def latency(contender, transport, n, rate, duration, size=90, cap=20.0):
    """M = rate*duration messages on a schedule; latency from the scheduled time."""
    m = int(rate * duration)
    with Session(contender, transport) as session:
        client = session.client(n, m, timeout=duration + cap + 600,
                                sample_every=max(1, n // 100))
        session.wait_subscribers(n)
        time.sleep(0.2)
        cpu0, client_cpu0 = session.cpu(), client.cpu()
        t0 = time.monotonic()
        answered = _get(session, f"/paced?messages={m}&rate={rate}&size={size}", duration + cap)
        report = _wait_report(session, client, t0 + duration + cap)
        cpu = session.cpu() - cpu0
        stats = session.stats() if contender in ("cython", "python") else {}
        problems = session.problems()
    record = {"n": n, "m": m, "rate": rate, "duration_s": duration, "size": size, "cap_s": cap,
              **_delivery_fields(report, t0, cpu, client_cpu0, n * m),
              "server_stats": stats, "server_log_problems": problems, "info": session.info}
    lat = record["latency"] or {}
    record["backlog"] = backlog(lat) if lat else None
    if not answered or not report["complete"]:
        record["partial"] = True
        record["notes"].append(f"capped at {duration:.0f}+{cap:.0f} s: "
                               f"{'producer still behind schedule; ' if not answered else ''}"
                               "latency over the frames delivered by then")
    return record


def backlog(lat):
    """Whether latency grows over the run: the last third's median is more than twice
    the first third's (and over 5 ms more), or it grows by more than 10 ms per second."""
    first, last = lat["p50_first_third_ms"], lat["p50_last_third_ms"]
    return bool(last > 2 * first and last - first > 5) or lat["slope_ms_per_s"] > 10


def idle_memory(contender, transport, n, cap=120.0, settle=1.0):
    """Server RSS per idle subscriber: (RSS with N subscribers - RSS before) / N, the
    RSS read ``settle`` s after the N-th subscriber registered, and again as much later."""
    with Session(contender, transport) as session:
        time.sleep(settle / 3)
        rss0 = session.rss()
        client = session.client(n, 0, timeout=cap + 600, hold=True)
        t0 = time.monotonic()
        session.wait_subscribers(n, timeout=cap)
        connect_s = time.monotonic() - t0
        time.sleep(settle)
        rss1 = session.rss()
        time.sleep(settle)
        rss2 = session.rss()
        report = client.report(0.1)
        problems = session.problems()
    notes = []
    if report["error_count"]:
        notes.append(f"{report['error_count']} connection errors: {'; '.join(report['errors'])}")
    return {"n": n, "rss_before": rss0, "rss_after": rss2, "rss_after_1s": rss1,
            "bytes_per_subscriber": (rss2 - rss0) / n, "connect_s": connect_s,
            "errors": report["error_count"], "complete": not report["error_count"],
            "notes": notes, "server_log_problems": problems, "info": session.info}


def stalled(contender, transport, stalled_n, m, checkpoints=10, per_iter=100, size=90,
            cap=60.0, rate=200_000, chunk=None):
    """RSS while M messages flow past ``stalled_n`` never-reading subscribers and one
    reader; RSS is read after each of ``checkpoints`` equal bursts (or each ``chunk``
    messages). Bursts go at most ``rate`` messages/s, so that the one reader keeps up."""
    chunk = chunk or max(1, m // checkpoints)
    with Session(contender, transport) as session:
        client = session.client(1, m, timeout=cap + 600, stalled=stalled_n, sample_every=1)
        session.wait_subscribers(stalled_n + 1)
        time.sleep(0.3)
        rss0 = session.rss()
        cpu0 = session.cpu()
        points = [(0, rss0)]
        sent = 0
        t0 = time.monotonic()
        partial = False
        while sent < m:
            left = cap - (time.monotonic() - t0)
            if left <= 0:
                partial = True
                break
            count = min(chunk, m - sent)
            if not _get(session, f"/burst?messages={count}&start={sent}&per_iter={per_iter}"
                        f"&size={size}&rate={rate}", left):
                partial = True
                break
            sent += count
            points.append((sent, session.rss()))
        elapsed = time.monotonic() - t0
        report = client.report(2.0 if partial else 60.0)
        cpu = session.cpu() - cpu0
        stats = session.stats() if contender in ("cython", "python") else {}
        problems = session.problems()
    rss_end = points[-1][1]
    half = points[len(points) // 2]
    notes = []
    if report["error_count"]:
        notes.append(f"reader: {report['error_count']} errors: {'; '.join(report['errors'])}")
    if report["min"] < sent:
        notes.append(f"reader got {report['min']} of {sent} frames")
    if partial:
        notes.append(f"capped at {cap:.0f} s: {sent} of {m} messages submitted")
    growth = rss_end - rss0
    return {"stalled": stalled_n, "m": m, "sent": sent, "elapsed_s": elapsed, "rate": rate,
            "points": points, "rss_growth": growth,
            "rss_growth_second_half": rss_end - half[1],
            "bytes_per_message": growth / sent if sent else None,
            "bounded": bounded(points),
            "reader_frames": report["min"], "complete": report["min"] >= sent and not partial,
            "server_cpu_s": cpu, "partial": partial, "server_stats": stats,
            "notes": notes, "server_log_problems": problems, "info": session.info}


def bounded(points):
    """RSS growth independent of the number of messages: over the second half of the
    run RSS grew by at most 2 MiB or a tenth of the first half's growth."""
    if len(points) < 3:
        return None
    rss0 = points[0][1]
    mid = points[len(points) // 2][1]
    end = points[-1][1]
    return end - mid <= max(2 << 20, 0.1 * (mid - rss0))


__all__ = ["BenchError", "throughput", "topics", "latency", "idle_memory", "stalled"]

"""The scenarios: each function runs one contender once and returns a flat record.

* :func:`throughput` -- burst (``per_iter=100``) and per-message (``per_iter=1``)
  delivery of M messages to N subscribers; also the N sweep.
* :func:`topics` -- a market feed: N connections, each subscribed to K of T topics,
  M ticks (tick j to topic j % T), ``per_iter`` per loop iteration.
* :func:`latency` -- M messages paced at R per second to N subscribers.
* :func:`idle_memory` -- server RSS per idle subscriber.
* :func:`stalled` -- server RSS while M messages flow past S subscribers that never
  read, and one that does.
* :func:`storm` -- every SSE subscriber cut at once (``GET /cut``) while messages flow;
  time until the last is back (reconnected browser-like), and exact resumption.
* :func:`admission` -- server CPU per new SSE subscriber, N connections in one burst.
* :func:`soak` -- connection churn (SSE and WebSocket, FIN, RST, mid-frame) while steady
  subscribers receive a paced feed: nothing lost, descriptors and RSS back to baseline.

Every record says whether every connection got every frame (``complete``), in
order on the sampled connections (``disorder``), and why not (``notes``).
"""

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time

from bench.harness import REPO, BenchError, Client, Session, pin

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
        "wire_bytes": report.get("wire_bytes"),
        "notes": notes,
    }


def throughput(contender, transport, n, m, per_iter, size=90, cap=120.0, server_args=(),
               compress=False):
    """Server CPU per delivery for M messages, ``per_iter`` per loop iteration.
    ``server_args`` go to bench/server.py; ``compress`` makes the client ask for
    compression (bench/compression.py)."""
    with Session(contender, transport, server_args) as session:
        client = session.client(n, m, timeout=cap + 600, sample_every=max(1, n // 10),
                                compress=compress)
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
           cap=120.0, server_args=(), compress=False):
    """Server CPU per delivery for a market feed: N connections, connection i subscribed
    to the ``per_conn`` topics ``(i + (n_topics // per_conn) * k) % n_topics`` (its own
    URL, ``?topics=S000,S010,...``); M ticks, tick j to topic ``S%03d % (j % n_topics)``,
    ``per_iter`` per loop iteration. Every connection expects ``per_conn * m / n_topics``
    frames; ``writes_per_delivery`` is the server's ``writes / delivered``."""
    if n_topics % per_conn or m % n_topics:
        raise BenchError(f"topics: {per_conn} topics per connection must divide {n_topics} "
                         f"topics, which must divide {m} ticks")
    expect = per_conn * m // n_topics
    with Session(contender, transport, ["--topics", str(n_topics), *server_args]) as session:
        client = session.client(n, expect, timeout=cap + 600, sample_every=max(1, n // 10),
                                topics=n_topics, topics_per_conn=per_conn, compress=compress)
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


def _python_client(session, args):
    """Start bench/stormclient.py (pinned to the client CPU) on ``session``'s server."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.stormclient", "--port",
                             str(session.port), *map(str, args)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    pin(proc.pid, 1)
    session.procs.append(proc)
    return proc


def _client_cpu(proc):
    from bench.harness import cpu_seconds
    try:
        return cpu_seconds(proc.pid)
    except (FileNotFoundError, ProcessLookupError):
        return None


def _percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def storm(contender, n, rate, before, after, cap=60.0, size=90):
    """Every subscriber cut at once while ``rate`` msg/s are published; each reconnects
    browser-like (after its stream's ``retry:`` hint, with ``Last-Event-ID``).

    Messages are paced for ``before + after`` s; the cut (``GET /cut``: every
    subscriber's connection closed by the server) comes ``before`` s in. Figures: time
    from the cut until each subscriber's reconnection was answered ``200`` (client
    side: last and p50) and until the server counted N subscribers again (``/subscribers``
    polled every 20 ms); whether every subscriber got every message exactly once, in
    order, without a ``tornadose-gap`` event (bench/stormclient.py)."""
    m = int(rate * (before + after))
    with Session(contender, "sse") as session:
        client = _python_client(session, ["-n", n, "--expect", m,
                                          "--timeout", before + after + cap + 60])
        session.wait_subscribers(n)
        time.sleep(0.2)
        paced = {}
        thread = threading.Thread(target=lambda: paced.update(
            ok=_get(session, f"/paced?messages={m}&rate={rate}&size={size}",
                    before + after + cap)), daemon=True)
        thread.start()
        time.sleep(before)
        cpu0, client_cpu0 = session.cpu(), _client_cpu(client)
        t_cut = time.monotonic()
        cut = json.loads(session.get("/cut"))["cut"]
        t_cut_answered = time.monotonic()
        # the server's count: down (the cut streams unregistered), then back to N
        dropped = t_back_server = None
        low = n
        deadline = t_cut + after + cap
        while time.monotonic() < deadline:
            count = int(session.get("/subscribers", 30))
            now = time.monotonic()
            low = min(low, count)
            if dropped is None and count < n:
                dropped = now
            if dropped is not None and count >= n:
                t_back_server = now
                break
            if dropped is None and now - t_cut > 1.0:
                break  # never dropped: reported below
            time.sleep(0.02)
        cpu_back = session.cpu() - cpu0
        t_polled = time.monotonic()
        thread.join(before + after + cap)
        report = _wait_report(session, _Reader(client), time.monotonic() + cap)
        client_cpu = report["cpu_s"] - (client_cpu0 or 0.0) if report else None
        cpu = session.cpu() - cpu0
        stats = session.stats() if contender in ("cython", "python") else {}
        problems = session.problems()
    notes = []
    backs = [b for b in report["backs"] if b[0] >= t_cut - 0.001]
    waits = [head - t_cut for _, _, head in backs]
    # how long after its hint each reconnection was answered (the server's queue, or
    # the client's lag), and when the client saw the closes
    late = [head - closed - (retry_ms or 3000) / 1000 for closed, retry_ms, head in backs]
    seen = [closed - t_cut for closed, _, _ in backs]
    record = {"n": n, "m": m, "rate": rate, "before_s": before, "after_s": after,
              "cut": cut, "cut_answered_s": t_cut_answered - t_cut,
              "reconnected": report["streams_reconnected"],
              "reconnections": report["reconnections"],
              "back_last_s": max(waits) if waits else None,
              "back_p50_s": _percentile(waits, 0.5),
              "back_first_s": min(waits) if waits else None,
              "back_server_s": t_back_server - t_cut if t_back_server else None,
              "late_p50_s": _percentile(late, 0.5), "late_max_s": max(late) if late else None,
              "close_seen_last_s": max(seen) if seen else None,
              "subscribers_low": low,
              "retry_ms_min": report["retry_ms_min"], "retry_ms_max": report["retry_ms_max"],
              "complete": report["complete"], "exact": report["exact"],
              "gaps": report["gaps"], "disorder": report["disorder"],
              "frames_min": report["frames_min"], "frames_max": report["frames_max"],
              "delivered": report["total"], "expected": n * m,
              "errors": report["error_count"],
              "server_cpu_s": cpu, "server_cpu_until_back_s": cpu_back,
              # the server's CPU share from the cut until its count was back (1.0: saturated)
              "server_busy_until_back": cpu_back / (t_polled - t_cut),
              "client_cpu_s": client_cpu,
              "client_busy": client_cpu / (after + before) if client_cpu is not None else None,
              "server_stats": stats, "server_log_problems": problems, "info": session.info,
              "notes": notes}
    if cut != n:
        notes.append(f"/cut closed {cut} of {n} subscribers")
    if dropped is None:
        notes.append("the server's subscriber count never dropped after the cut")
    if report["streams_reconnected"] != n:
        notes.append(f"{report['streams_reconnected']} of {n} subscribers reconnected")
    if report["reconnections"] != report["streams_reconnected"]:
        notes.append(f"{report['reconnections']} reconnections for "
                     f"{report['streams_reconnected']} subscribers (cut more than once)")
    if not report["exact"]:
        notes.append(f"not exact: {report['gaps']} gap events, {report['disorder']} reads out "
                     f"of sequence, frames per subscriber {report['frames_min']}.."
                     f"{report['frames_max']} of {m}")
    if report["error_count"]:
        notes.append(f"{report['error_count']} errors: {'; '.join(report['errors'])}")
    if not paced.get("ok"):
        notes.append("the paced publisher did not finish in time")
    return record


class _Reader:
    """The storm client's JSON report, like harness.Client.report."""

    def __init__(self, proc):
        self.proc = proc

    def report(self, wait):
        try:
            out, _ = self.proc.communicate(timeout=max(0.5, wait))
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=60)
        if self.proc.returncode != 0 or not out:
            raise BenchError(f"storm client failed with exit code {self.proc.returncode}")
        return json.loads(out)


def admission(contender, n, cap=60.0):
    """Server CPU per new SSE subscriber: N connections opened in one burst
    (bench/stormclient.py --admission), server CPU from before the burst until every
    head arrived and the server counts N subscribers, divided by N."""
    with Session(contender, "sse") as session:
        time.sleep(0.3)
        cpu0 = session.cpu()
        client = _python_client(session, ["-n", n, "--admission", "--hold",
                                          "--timeout", cap])
        ready, _, _ = select.select([client.stdout], [], [], cap + 30)
        if not ready:
            raise BenchError(f"admission: no report from the client within {cap + 30} s")
        line = client.stdout.readline()
        if not line:
            raise BenchError(f"admission: the client exited with {client.wait(5)}")
        report = json.loads(line)
        session.wait_subscribers(n, timeout=cap)
        cpu = session.cpu() - cpu0
        t_done = time.monotonic()
        client_cpu = _client_cpu(client)
        problems = session.problems()
    notes = []
    if report["error_count"]:
        notes.append(f"{report['error_count']} errors: {'; '.join(report['errors'])}")
    if not report["complete"]:
        notes.append(f"{report['answered']} of {n} heads")
    wall = (report["t_last_head"] - report["t_first"]) if report["t_last_head"] else None
    return {"n": n, "server_cpu_s": cpu, "us_per_subscriber": cpu / n * US,
            "head_p50_ms": report["head_p50_s"] * 1e3 if report["head_p50_s"] else None,
            "head_p99_ms": report["head_p99_s"] * 1e3 if report["head_p99_s"] else None,
            "head_max_ms": report["head_max_s"] * 1e3 if report["head_max_s"] else None,
            "burst_s": wall, "registered_s": t_done - report["t_first"],
            "complete": report["complete"] and not report["error_count"],
            "errors": report["error_count"], "client_cpu_s": client_cpu,
            "server_log_problems": problems, "info": session.info, "notes": notes}


def _open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def soak(contender, n, rate, churn, duration, warm=3.0, settle=10.0, max_life=0.5,
         cap=60.0, size=90):
    """``n`` steady subscribers (half SSE, half WebSocket, one store) receive ``rate``
    msg/s while bench/churnclient.py opens ``churn`` connections per second for
    ``duration`` s and ends each within ``max_life`` s in one of its seven ways.

    The baseline (open descriptors, RSS) is read ``warm`` s after publishing started
    (the store's history, ``rate x warm / 2`` messages, is full by then), before the churn; both are sampled every second during it, and read again once the
    churn is over (descriptors: as soon as they are back to the baseline, within
    ``settle`` s) and once publishing is over. Figures: whether every steady subscriber
    got every message (in order on the sampled ones), the descriptor and RSS
    differences, the server's CPU share during the churn, and any server log line at
    WARNING or above."""
    m = int(rate * (warm + duration + settle))
    half = n // 2
    # A history that is full before the baseline is read: its growth is not a leak.
    capacity = max(16, int(rate * warm / 2))
    with Session(contender, "both", ["--capacity", str(capacity)]) as session:
        pid = session.server.pid
        steady = []
        for transport, count in (("sse", n - half), ("ws", half)):
            client = Client(session.port, transport, count, m, timeout=m / rate + cap,
                            sample_every=max(1, count // 20))
            session.procs.append(client.proc)
            steady.append(client)
        session.wait_subscribers(n)
        paced = {}
        thread = threading.Thread(target=lambda: paced.update(
            ok=_get(session, f"/paced?messages={m}&rate={rate}&size={size}",
                    m / rate + cap)), daemon=True)
        thread.start()
        time.sleep(warm)
        fds0, rss0, cpu0 = _open_fds(pid), session.rss(), session.cpu()
        churner = subprocess.Popen(
            [sys.executable, "-m", "bench.churnclient", "--port", str(session.port),
             "--rate", str(churn), "--duration", str(duration), "--max-life", str(max_life)],
            cwd=REPO, stdout=subprocess.PIPE, text=True)
        pin(churner.pid, 1)
        session.procs.append(churner)
        t0 = time.monotonic()
        samples = []  # (s since the churn began, open fds, RSS bytes)
        while churner.poll() is None and time.monotonic() - t0 < duration + cap:
            time.sleep(1.0)
            samples.append((time.monotonic() - t0, _open_fds(pid), session.rss()))
        churn_report = json.loads(churner.communicate(timeout=cap)[0] or "{}")
        churn_s = time.monotonic() - t0
        cpu_churn = session.cpu() - cpu0
        t1 = time.monotonic()
        while _open_fds(pid) > fds0 and time.monotonic() - t1 < settle:
            time.sleep(0.1)
        fds1, rss1 = _open_fds(pid), session.rss()
        fds_back_s = time.monotonic() - t1 if fds1 <= fds0 else None
        thread.join(m / rate + cap)
        reports = [client.report(cap) for client in steady]
        rss2 = session.rss()
        stats = session.stats()
        problems = [line for line in session.log_path.read_text(errors="replace").splitlines()
                    if not line.startswith("bench.server:")][:20]
    delivered = sum(r["total"] for r in reports)
    complete = all(r["complete"] and not r["error_count"] for r in reports)
    disorder = sum(r["sampled_disorder"] for r in reports)
    notes = []
    if not complete:
        notes.append("steady subscribers incomplete: " + "; ".join(
            f"{r['min']}..{r['max']} of {m} per connection, {r['error_count']} errors"
            for r in reports))
    if disorder:
        notes.append(f"{disorder} out-of-order/missing frames on sampled steady subscribers")
    if churn_report.get("error_count"):
        notes.append(f"churn client: {churn_report['error_count']} errors: "
                     + "; ".join(churn_report["errors"][:3]))
    if fds_back_s is None:
        notes.append(f"descriptors not back to the baseline within {settle} s: "
                     f"{fds1} vs {fds0}")
    if not paced.get("ok"):
        notes.append("the paced publisher did not finish in time")
    return {"n": n, "rate": rate, "churn": churn, "duration_s": duration, "m": m,
            "delivered": delivered, "expected": n * m, "complete": complete,
            "disorder": disorder,
            "churn_opened": churn_report.get("opened"),
            "churn_heads": sum(churn_report.get("heads_by_kind", {}).values()),
            "churn_report": churn_report, "churn_s": churn_s,
            "fds_before": fds0, "fds_peak": max((f for _, f, _ in samples), default=fds0),
            "fds_after": fds1, "fds_back_s": fds_back_s,
            "rss_before": rss0, "rss_peak": max((r for _, _, r in samples), default=rss0),
            "rss_after_churn": rss1, "rss_after": rss2,
            "rss_growth_mb": (rss2 - rss0) / 2**20,
            # a leak keeps growing; allocator high-water flattens out
            "rss_growth_second_half_mb": (
                (samples[-1][2] - samples[len(samples) // 2][2]) / 2**20 if samples else None),
            "samples": samples, "server_busy_during_churn": cpu_churn / churn_s,
            "server_stats": stats, "server_log_problems": problems, "info": session.info,
            "notes": notes}


__all__ = ["BenchError", "throughput", "topics", "latency", "idle_memory", "stalled",
           "storm", "admission", "soak"]

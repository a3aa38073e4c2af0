"""Ratios, target checks, the terminal table and the plots of one bench run."""

import os
import statistics

FLOOR = {"burst": "floor", "per-message": "floor-msg", "sweep": "floor", "latency": "floor",
         "topics": "floor-topics"}
TITLES = {"burst": "burst", "per-message": "per-message", "sweep": "sweep (burst SSE)"}


def _records(doc, scenario, transport=None, n=None, per_iter=None):
    return [r for r in doc["records"] if r["scenario"] == scenario
            and (transport is None or r["transport"] == transport)
            and (n is None or r["params"].get("n") == n)
            and (per_iter is None or r["params"].get("per_iter") == per_iter)]


def _topic_groups(doc):
    """(transport, per_iter) of the topics records, in table order."""
    recs = _records(doc, "topics")
    return [(t, k) for k in dict.fromkeys(r["params"]["per_iter"] for r in recs)
            for t in ("sse", "ws") if _records(doc, "topics", t, per_iter=k)]


def _idle_groups(doc):
    """(transport, n) of the idle records, in table order."""
    recs = _records(doc, "idle")
    return [(t, n) for n in dict.fromkeys(r["params"]["n"] for r in recs)
            for t in ("sse", "ws") if _records(doc, "idle", t, n=n)]


def _by(records):
    return {r["contender"]: r for r in records}


def _num(value):
    return value if isinstance(value, (int, float)) else None


def add_ratios(doc):
    """``x_floor`` (µs per delivery over the floor's) and ``ref_over`` (the reference's
    µs per delivery over this one's: how many times better than the reference)."""
    for scenario in ("burst", "per-message", "sweep"):
        groups = {}
        for r in _records(doc, scenario):
            key = (r["transport"], r["params"]["n"] if scenario == "sweep" else None)
            groups.setdefault(key, []).append(r)
        for (transport, _), records in groups.items():
            by = _by(records)
            if scenario == "sweep":
                # the reference may have been capped: compare per delivery anyway
                by.setdefault("reference", None)
            else:
                ref = [r for r in _records(doc, scenario, transport)
                       if r["contender"] == "reference"]
                by["reference"] = ref[0] if ref else None
            floor = by.get(FLOOR[scenario])
            ref = by.get("reference")
            for r in records:
                us = _num(r.get("us_per_delivery"))
                if us is None:
                    continue
                if floor and _num(floor.get("us_per_delivery")):
                    r["x_floor"] = us / floor["us_per_delivery"]
                if ref and _num(ref.get("us_per_delivery")):
                    r["ref_over"] = ref["us_per_delivery"] / us
    for transport, per_iter in _topic_groups(doc):
        by = _by(_records(doc, "topics", transport, per_iter=per_iter))
        floor = by.get(FLOOR["topics"])
        for r in by.values():
            us = _num(r.get("us_per_delivery"))
            if us is not None and floor and _num(floor.get("us_per_delivery")):
                r["x_floor"] = us / floor["us_per_delivery"]
    lat = _by(_records(doc, "latency"))
    for r in lat.values():
        p99 = (r.get("latency") or {}).get("p99_ms")
        for base, key in (("floor", "x_floor_p99"), ("floor+nodelay", "x_floor_nodelay_p99")):
            bp99 = ((lat.get(base) or {}).get("latency") or {}).get("p99_ms")
            if p99 and bp99:
                r[key] = p99 / bp99
    for transport, n in _idle_groups(doc):
        idle = _by(_records(doc, "idle", transport, n=n))
        ref = idle.get("reference")
        for r in idle.values():
            if ref and r.get("bytes_per_subscriber") and ref.get("bytes_per_subscriber"):
                r["ref_over"] = ref["bytes_per_subscriber"] / r["bytes_per_subscriber"]
    adm = _by(_records(doc, "admission"))
    bare = adm.get("bare-tornado") or {}
    for r in adm.values():
        if _num(r.get("us_per_subscriber")) and _num(bare.get("us_per_subscriber")):
            r["x_bare_of_medians"] = r["us_per_subscriber"] / bare["us_per_subscriber"]
            r["x_bare"] = r["x_bare_of_medians"]
            r.pop("x_bare_rounds", None)
            rounds = _paired_ratios(r.get("repeats_us_per_subscriber"),
                                    bare.get("repeats_us_per_subscriber"))
            if rounds:
                r["x_bare_rounds"] = rounds
                r["x_bare"] = statistics.median(rounds)


def _paired_ratios(runs, base_runs):
    """Round by round ratios of two contenders' repeats (run back to back in each round:
    on a shared machine, neighbours in time see the same load), or None when the
    repeats do not pair up."""
    if not runs or not base_runs or len(runs) != len(base_runs):
        return None
    if not all(_num(a) and _num(b) for a, b in zip(runs, base_runs)):
        return None
    return [a / b for a, b in zip(runs, base_runs)]


def targets(doc):
    """The issue's targets for the Cython backend (and one for pure Python)."""
    out = []

    def add(name, value, limit, met, detail=""):
        out.append({"target": name, "value": value, "limit": limit, "met": met,
                    "detail": detail})

    for scenario, limit in (("burst", 1.5), ("per-message", 1.15)):
        for transport in ("sse", "ws"):
            by = _by(_records(doc, scenario, transport))
            cy = by.get("cython")
            if not cy or "us_per_delivery" not in cy:
                continue
            complete = cy.get("complete")
            xf = cy.get("x_floor")
            if xf is not None:
                add(f"{scenario} {transport}: cython <= {limit}x {FLOOR[scenario]}",
                    round(xf, 3), limit, xf <= limit and complete,
                    "" if complete else "cython run incomplete")
            alike = by.get(FLOOR[scenario] + "+nodelay")
            if alike and _num(alike.get("us_per_delivery")):
                ratio = cy["us_per_delivery"] / alike["us_per_delivery"]
                add(f"{scenario} {transport}: cython <= {limit}x {FLOOR[scenario]}+nodelay "
                    "(same socket options)", round(ratio, 3), limit,
                    ratio <= limit and complete)
            if scenario == "burst" and cy.get("ref_over") is not None:
                add(f"burst {transport}: cython >= 100x better than reference",
                    round(cy["ref_over"], 1), 100, cy["ref_over"] >= 100)
            py = by.get("python")
            if scenario == "burst" and py and py.get("ref_over") is not None:
                add(f"burst {transport}: python >= 20x better than reference",
                    round(py["ref_over"], 1), 20, py["ref_over"] >= 20)
            wsb = by.get("websockets")
            if scenario == "per-message" and wsb and _num(wsb.get("us_per_delivery")):
                ratio = cy["us_per_delivery"] / wsb["us_per_delivery"]
                add(f"per-message {transport}: cython better than websockets broadcast()",
                    round(ratio, 3), 1.0, ratio < 1.0, "cython µs / websockets µs")
    for transport, per_iter in _topic_groups(doc):
        cy = _by(_records(doc, "topics", transport, per_iter=per_iter)).get("cython")
        if not cy:
            continue
        complete = cy.get("complete")
        detail = "" if complete else "cython run incomplete"
        xf = cy.get("x_floor")
        if xf is not None:
            add(f"topics {transport} {per_iter}/turn: cython <= 1.2x floor-topics",
                round(xf, 3), 1.2, xf <= 1.2 and complete, detail)
        wpd = cy.get("writes_per_delivery")
        if per_iter >= 100 and wpd is not None:
            add(f"topics {transport} {per_iter}/turn: cython writes per delivery <= 0.2",
                round(wpd, 3), 0.2, wpd <= 0.2 and complete, detail)
    lat = _by(_records(doc, "latency"))
    cy = lat.get("cython")
    if cy and cy.get("x_floor_p99") is not None:
        add("latency: cython p99 <= 1.5x floor p99", round(cy["x_floor_p99"], 3), 1.5,
            cy["x_floor_p99"] <= 1.5 and cy.get("complete"))
    if cy and cy.get("x_floor_nodelay_p99") is not None:
        add("latency: cython p99 <= 1.2x floor+nodelay p99", round(cy["x_floor_nodelay_p99"], 3),
            1.2, cy["x_floor_nodelay_p99"] <= 1.2 and cy.get("complete"),
            f"{cy['latency']['p99_ms']:.1f} vs "
            f"{lat['floor+nodelay']['latency']['p99_ms']:.1f} ms")
    if cy and cy.get("latency"):
        add("latency: cython no backlog building", cy["backlog"], False,
            cy["backlog"] is False and cy.get("complete"),
            f"p50 first third {cy['latency']['p50_first_third_ms']:.1f} ms, last third "
            f"{cy['latency']['p50_last_third_ms']:.1f} ms, slope "
            f"{cy['latency']['slope_ms_per_s']:.2f} ms/s")
    for transport, n in _idle_groups(doc):
        cy = _by(_records(doc, "idle", transport, n=n)).get("cython")
        if cy and cy.get("bytes_per_subscriber") is not None:
            kb = cy["bytes_per_subscriber"] / 1024
            add(f"idle: cython <= 8 KB RSS per idle {transport.upper()} subscriber (N={n})",
                round(kb, 2), 8, kb <= 8)
    cy = _by(_records(doc, "stalled")).get("cython")
    if cy and cy.get("bounded") is not None:
        add("stalled: cython RSS growth bounded (independent of messages sent)",
            round(cy["rss_growth_second_half"] / 2**20, 2), "MiB in 2nd half", cy["bounded"])
    cy = _by(_records(doc, "storm")).get("cython")
    if cy and "exact" in cy:
        last = cy.get("back_last_s")
        add("storm: last subscriber back within 5 s of the cut",
            round(last, 3) if last is not None else None, 5.0,
            last is not None and last <= 5.0 and cy["reconnected"] == cy["n"],
            f"N={cy['n']}, p50 {_fmt(cy.get('back_p50_s'), '.2f')} s, server count back "
            f"after {_fmt(cy.get('back_server_s'), '.2f')} s; answered after the hint: p50 "
            f"{_fmt(cy.get('late_p50_s'), '.2f')} s, max {_fmt(cy.get('late_max_s'), '.2f')} s; "
            f"server CPU busy {_pct(cy.get('server_busy_until_back'))} until then")
        add("storm: cython every subscriber resumed exactly (no gap, duplicate, missing)",
            cy["exact"], True, bool(cy["exact"]),
            f"{cy['gaps']} gap events, {cy['disorder']} reads out of sequence")
    cy = _by(_records(doc, "admission")).get("cython")
    if cy and _num(cy.get("x_bare")) is not None:
        rounds = cy.get("x_bare_rounds")
        how = (f"median of {len(rounds)} rounds: "
               f"{', '.join(f'{x:.2f}' for x in rounds)}; ratio of the medians "
               f"{cy['x_bare_of_medians']:.2f}; " if rounds else "")
        add("admission: cython <= 1.1x bare-tornado", round(cy["x_bare"], 3), 1.1,
            cy["x_bare"] <= 1.1 and cy.get("complete"),
            f"{how}{cy['us_per_subscriber']:.1f} µs per subscriber, N={cy['n']}")
    for transport in ("sse", "ws"):
        by = _by(_records(doc, "burst", transport))
        plain, metered = by.get("cython"), by.get("cython+metrics")
        if plain and metered and _num(plain.get("us_per_delivery")) \
                and _num(metered.get("us_per_delivery")):
            ratio = metered["us_per_delivery"] / plain["us_per_delivery"]
            add(f"burst {transport.upper()}: metrics installed cost nothing measurable "
                "(cython+metrics / cython)", round(ratio, 3), 1.05, ratio <= 1.05,
                f"{metered['us_per_delivery']:.3f} vs {plain['us_per_delivery']:.3f} µs "
                "per delivery")
    cy = _by(_records(doc, "soak")).get("cython")
    if cy and "complete" in cy:
        add("soak: cython steady subscribers got every message, in order",
            cy["complete"] and not cy["disorder"], True,
            bool(cy["complete"] and not cy["disorder"]),
            f"{_si(cy['delivered'])}/{_si(cy['expected'])} delivered")
        add("soak: cython descriptors back to the baseline after the churn",
            cy["fds_after"] - cy["fds_before"], 0, cy["fds_after"] <= cy["fds_before"],
            f"{cy['fds_before']} before, peak {cy['fds_peak']}, {cy['fds_after']} after")
        growth = cy["rss_growth_mb"]
        add(f"soak: cython RSS back within {SOAK_RSS_MARGIN_MB} MiB of the baseline",
            round(growth, 2), SOAK_RSS_MARGIN_MB, growth <= SOAK_RSS_MARGIN_MB,
            f"{_mb(cy['rss_before'])} before, peak {_mb(cy['rss_peak'])}, "
            f"{_mb(cy['rss_after'])} after; second half of the churn: "
            f"{_fmt(cy.get('rss_growth_second_half_mb'), '+.2f')} MiB")
        add("soak: cython server log empty (nothing at WARNING or above)",
            len(cy["server_log_problems"]), 0, not cy["server_log_problems"])
    return out


#: How far above its pre-churn RSS the soak server may end (allocator slack, no leak).
SOAK_RSS_MARGIN_MB = 8


def _fmt(value, spec, missing="-"):
    return format(value, spec) if _num(value) is not None else missing


def _si(value):
    if not _num(value):
        return "-"
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:.2f}{suffix}"
    return f"{value:.0f}"


def _pct(value):
    return f"{value * 100:.0f}%" if _num(value) is not None else "-"


def table(doc):
    lines = []
    m = doc["machine"]
    lines.append(f"tornadose bench, {doc['date']}, preset {doc['preset']}: "
                 f"{m['cpus_usable']} CPUs usable, server and client "
                 f"{'pinned to separate CPUs' if m['pinned'] else 'NOT pinned (one CPU)'}; "
                 f"load average at start {tuple(round(x, 2) for x in m.get('loadavg_start', ()))}")
    notes = []
    for scenario in ("burst", "per-message"):
        for transport in ("sse", "ws"):
            recs = _records(doc, scenario, transport)
            if not recs:
                continue
            p = recs[0]["params"]
            lines.append("")
            lines.append(f"{scenario} {transport.upper()}: N={p['n']} subscribers, M={p['m']} "
                         f"messages of 90 B, {p['per_iter']} per loop iteration; ratios to "
                         f"{FLOOR[scenario]} and to the reference")
            lines.append(f"  {'contender':<18}{'µs/deliv':>10}{'x floor':>9}{'ref/x':>9}"
                         f"{'deliv/s':>10}{'delivered':>20}{'client CPU':>11}")
            for r in recs:
                lines.append(_row(r))
                notes += [f"{scenario} {transport} {r['contender']}: {n}"
                          for n in r.get("notes", [])]
    for transport, per_iter in _topic_groups(doc):
        recs = _records(doc, "topics", transport, per_iter=per_iter)
        p = recs[0]["params"]
        lines.append("")
        lines.append(f"topics {transport.upper()}: N={p['n']} connections x {p['per_conn']} of "
                     f"{p['topics']} topics, M={p['m']} ticks of 90 B (tick j to topic j % "
                     f"{p['topics']}), {per_iter} per loop iteration; ratios to floor-topics")
        lines.append(f"  {'contender':<16}{'µs/deliv':>10}{'x floor':>9}{'writes/deliv':>14}"
                     f"{'deliv/s':>10}{'delivered':>20}{'client CPU':>11}")
        for r in recs:
            lines.append(
                f"  {r['contender']:<16}{_fmt(r.get('us_per_delivery'), '.3f'):>10}"
                f"{_fmt(r.get('x_floor'), '.2f'):>9}{_fmt(r.get('writes_per_delivery'), '.3f'):>14}"
                f"{_si(r.get('deliveries_per_s')):>10}{_delivered(r):>20}"
                f"{_pct(r.get('client_busy')):>11}")
            notes += [f"topics {transport} {per_iter}/turn {r['contender']}: {n}"
                      for n in r.get("notes", [])]
    recs = _records(doc, "latency")
    if recs:
        p = recs[0]["params"]
        lines.append("")
        lines.append(f"latency SSE: N={p['n']}, {p['rate']} msg/s paced for {p['duration']} s "
                     "(latency from the scheduled submit time, sampled connections)")
        lines.append(f"  {'contender':<16}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
                     f"{'x floor':>9}{'x nodelay':>10}{'backlog':>9}{'µs/deliv':>10}"
                     f"{'delivered':>20}{'client':>8}")
        for r in recs:
            lat = r.get("latency") or {}
            lines.append(
                f"  {r['contender']:<16}{_fmt(lat.get('p50_ms'), '.1f'):>9}"
                f"{_fmt(lat.get('p99_ms'), '.1f'):>9}{_fmt(lat.get('max_ms'), '.1f'):>9}"
                f"{_fmt(r.get('x_floor_p99'), '.2f'):>9}"
                f"{_fmt(r.get('x_floor_nodelay_p99'), '.2f'):>10}"
                f"{str(r.get('backlog', '-')):>9}{_fmt(r.get('us_per_delivery'), '.3f'):>10}"
                f"{_delivered(r):>20}{_pct(r.get('client_busy')):>8}")
            notes += [f"latency {r['contender']}: {n}" for n in r.get("notes", [])]
    for transport, n in _idle_groups(doc):
        recs = _records(doc, "idle", transport, n=n)
        lines.append("")
        lines.append(f"idle memory {transport.upper()}: server RSS per idle subscriber, N={n}")
        lines.append(f"  {'contender':<14}{'RSS before':>12}{'RSS after':>12}{'KB/sub':>9}"
                     f"{'ref/x':>8}")
        for r in recs:
            per_sub = r.get("bytes_per_subscriber")
            kb = per_sub / 1024 if per_sub is not None else None
            lines.append(f"  {r['contender']:<14}{_mb(r.get('rss_before')):>12}"
                         f"{_mb(r.get('rss_after')):>12}{_fmt(kb, '.2f'):>9}"
                         f"{_fmt(r.get('ref_over'), '.1f'):>8}")
            notes += [f"idle {r['contender']}: {n}" for n in r.get("notes", [])]
    recs = _records(doc, "stalled")
    if recs:
        p = recs[0]["params"]
        lines.append("")
        lines.append(f"stalled SSE: {p['stalled']} subscribers that never read + 1 reader, "
                     f"{p['m']} messages; server RSS growth (MiB) after each 1/{p['checkpoints']}")
        for r in recs:
            if "points" not in r:
                lines.append(f"  {r['contender']:<14} not run")
                continue
            rss0 = r["points"][0][1]
            pts = r["points"][1:]
            if len(pts) > 10:  # ten evenly spaced checkpoints, the last included
                pts = [pts[round((i + 1) * len(pts) / 10) - 1] for i in range(10)]
            growth = " ".join(f"{(rss - rss0) / 2**20:.1f}" for _, rss in pts)
            stats = r.get("server_stats") or {}
            extra = (f" lapped {stats.get('lapped')}, timed out {stats.get('timed_out')}"
                     if stats else "")
            lines.append(f"  {r['contender']:<14} sent {r['sent']:>8}: {growth}  "
                         f"bounded={r['bounded']}  {_fmt(r.get('bytes_per_message'), '.1f')} B/msg"
                         f"{extra}")
            notes += [f"stalled {r['contender']}: {n}" for n in r.get("notes", [])]
    recs = _records(doc, "sweep")
    if recs:
        ns = sorted({r["params"]["n"] for r in recs})
        names = list(dict.fromkeys(r["contender"] for r in recs))
        lines.append("")
        lines.append(f"sweep (burst SSE, M={recs[0]['params']['m']}): server CPU µs per "
                     "delivery against N (* = capped, partial)")
        lines.append("  " + f"{'N':>7}" + "".join(f"{c:>12}" for c in names))
        for n in ns:
            by = _by(_records(doc, "sweep", n=n))
            cells = []
            for c in names:
                r = by.get(c) or {}
                cell = _fmt(r.get("us_per_delivery"), ".3f")
                cells.append(f"{cell + ('*' if r.get('partial') else ''):>12}")
            lines.append("  " + f"{n:>7}" + "".join(cells))
        for r in recs:
            notes += [f"sweep N={r['params']['n']} {r['contender']}: {n}"
                      for n in r.get("notes", [])]
    recs = _records(doc, "storm")
    if recs:
        p = recs[0]["params"]
        lines.append("")
        lines.append(f"storm SSE: N={p['n']} subscribers, {p['rate']} msg/s; every connection "
                     f"closed by the server (/cut) {p['before']} s in, each reconnects after its "
                     "retry: hint with Last-Event-ID; times from the cut")
        lines.append(f"  {'contender':<14}{'last back':>10}{'p50 back':>10}{'server N':>10}"
                     f"{'back':>12}{'retry ms':>12}{'exact':>7}{'gaps':>6}"
                     f"{'delivered':>20}{'server CPU':>11}{'client':>8}")
        for r in recs:
            if "exact" not in r:
                lines.append(f"  {r['contender']:<14} not run")
            else:
                lines.append(
                    f"  {r['contender']:<14}{_fmt(r.get('back_last_s'), '.2f'):>9}s"
                    f"{_fmt(r.get('back_p50_s'), '.2f'):>9}s"
                    f"{_fmt(r.get('back_server_s'), '.2f'):>9}s"
                    f"{str(r['reconnected']) + '/' + str(r['n']):>12}"
                    f"{str(r['retry_ms_min']) + '-' + str(r['retry_ms_max']):>12}"
                    f"{str(r['exact']):>7}{r['gaps']:>6}{_delivered(r):>20}"
                    f"{_fmt(r.get('server_cpu_s'), '.2f'):>10}s{_pct(r.get('client_busy')):>8}")
            notes += [f"storm {r['contender']}: {n}" for n in r.get("notes", [])]
    recs = _records(doc, "admission")
    if recs:
        lines.append("")
        lines.append(f"admission SSE: N={recs[0]['params']['n']} connections opened in one "
                     "burst; server CPU per new subscriber (x bare: the median of the "
                     "round-by-round ratios), connect-to-headers time")
        lines.append(f"  {'contender':<14}{'µs/sub':>9}{'x bare':>8}{'head p50 ms':>13}"
                     f"{'p99 ms':>9}{'max ms':>9}{'answered':>10}")
        for r in recs:
            lines.append(
                f"  {r['contender']:<14}{_fmt(r.get('us_per_subscriber'), '.1f'):>9}"
                f"{_fmt(r.get('x_bare'), '.2f'):>8}{_fmt(r.get('head_p50_ms'), '.1f'):>13}"
                f"{_fmt(r.get('head_p99_ms'), '.1f'):>9}{_fmt(r.get('head_max_ms'), '.1f'):>9}"
                f"{str(r.get('complete', '-')):>10}")
            notes += [f"admission {r['contender']}: {n}" for n in r.get("notes", [])]
    recs = _records(doc, "soak")
    if recs:
        p = recs[0]["params"]
        lines.append("")
        lines.append(f"soak: {p['n']} steady subscribers (half SSE, half WebSocket) at "
                     f"{p['rate']} msg/s while {p['churn']} connections/s come and go for "
                     f"{p['duration']:.0f} s (SSE and WebSocket; FIN, RST, close handshake, "
                     "mid-request, mid-frame)")
        lines.append(f"  {'contender':<14}{'steady':>10}{'churned':>9}{'fds before':>12}"
                     f"{'peak':>6}{'after':>7}{'RSS before':>12}{'peak':>11}{'after':>11}"
                     f"{'busy':>6}{'log':>5}")
        for r in recs:
            if "complete" not in r:
                lines.append(f"  {r['contender']:<14} not run")
            else:
                lines.append(
                    f"  {r['contender']:<14}{str(r['complete'] and not r['disorder']):>10}"
                    f"{r['churn_opened'] or 0:>9}{r['fds_before']:>12}{r['fds_peak']:>6}"
                    f"{r['fds_after']:>7}{_mb(r['rss_before']):>12}{_mb(r['rss_peak']):>11}"
                    f"{_mb(r['rss_after']):>11}{_pct(r['server_busy_during_churn']):>6}"
                    f"{len(r['server_log_problems']):>5}")
            notes += [f"soak {r['contender']}: {n}" for n in r.get("notes", [])]
    if doc.get("targets"):
        lines.append("")
        lines.append("targets:")
        for t in doc["targets"]:
            mark = {True: "met   ", False: "MISSED", None: "n/a   "}[t["met"]]
            lines.append(f"  {mark} {t['target']}: {t['value']} (limit {t['limit']})"
                         + (f"  [{t['detail']}]" if t["detail"] else ""))
    notes += doc.get("skipped", [])
    if notes:
        lines.append("")
        lines.append("notes:")
        lines += [f"  - {n}" for n in notes]
    return "\n".join(lines)


def _mb(value):
    return f"{value / 2**20:.1f} MiB" if _num(value) is not None else "-"


def _delivered(r):
    if "delivered" not in r:
        return "not run"
    mark = "" if r.get("complete") else " !"
    return f"{r['delivered']}/{r['expected']}{mark}"


def _row(r):
    return (f"  {r['contender']:<18}{_fmt(r.get('us_per_delivery'), '.3f'):>10}"
            f"{_fmt(r.get('x_floor'), '.2f'):>9}{_fmt(r.get('ref_over'), '.0f'):>9}"
            f"{_si(r.get('deliveries_per_s')):>10}{_delivered(r):>20}"
            f"{_pct(r.get('client_busy')):>11}")


def plots(doc, directory):
    """Write the PNG plots; returns their paths (none if matplotlib is missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    os.makedirs(directory, exist_ok=True)
    paths = []
    colors = {"cython": "#1f77b4", "python": "#17becf", "reference": "#d62728",
              "floor": "#2ca02c", "floor-msg": "#98df8a", "websockets": "#9467bd",
              "floor+nodelay": "#bcbd22", "cython+nodelay": "#aec7e8",
              "floor-topics": "#2ca02c"}
    panels = [(s, t) for s in ("burst", "per-message") for t in ("sse", "ws")
              if _records(doc, s, t)]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
        for ax, (scenario, transport) in zip(axes[0], panels):
            recs = [r for r in _records(doc, scenario, transport) if _num(r.get("us_per_delivery"))]
            names = [r["contender"] for r in recs]
            values = [r["us_per_delivery"] for r in recs]
            bars = ax.bar(range(len(recs)), values, color=[colors.get(c, "grey") for c in names])
            for bar, value in zip(bars, values):
                ax.annotate(f"{value:.3g}", (bar.get_x() + bar.get_width() / 2, value),
                            ha="center", va="bottom", fontsize=7)
            ax.set_yscale("log")
            ax.set_xticks(range(len(recs)), names, rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{scenario} {transport.upper()}", fontsize=10)
            ax.tick_params(axis="y", labelsize=8)
        axes[0][0].set_ylabel("server CPU µs per delivery (log)")
        fig.suptitle(f"tornadose bench {doc['date'][:10]}: N=1000 subscribers, 1000 messages",
                     fontsize=10)
        fig.tight_layout()
        path = os.path.join(directory, "scenarios.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    groups = _topic_groups(doc)
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.8), squeeze=False)
        for ax, (transport, per_iter) in zip(axes[0], groups):
            recs = [r for r in _records(doc, "topics", transport, per_iter=per_iter)
                    if _num(r.get("us_per_delivery"))]
            names = [r["contender"] for r in recs]
            values = [r["us_per_delivery"] for r in recs]
            bars = ax.bar(range(len(recs)), values, color=[colors.get(c, "grey") for c in names])
            for bar, r in zip(bars, recs):
                wpd = r.get("writes_per_delivery")
                label = f"{r['us_per_delivery']:.3g}" + (f"\n{wpd:.2f} w/d" if _num(wpd) else "")
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, r["us_per_delivery"]),
                            ha="center", va="bottom", fontsize=7)
            ax.set_xticks(range(len(recs)), names, rotation=45, ha="right", fontsize=8)
            ax.set_title(f"topics {transport.upper()}, {per_iter}/turn", fontsize=10)
            ax.tick_params(axis="y", labelsize=8)
            ax.margins(y=0.25)
        axes[0][0].set_ylabel("server CPU µs per delivery")
        p = _records(doc, "topics")[0]["params"]
        fig.suptitle(f"tornadose bench {doc['date'][:10]}: topics, N={p['n']} connections x "
                     f"{p['per_conn']} of {p['topics']} topics, {p['m']} ticks "
                     "(w/d: writes per delivery)", fontsize=9)
        fig.tight_layout()
        path = os.path.join(directory, "topics.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    recs = _records(doc, "sweep")
    if recs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in dict.fromkeys(r["contender"] for r in recs):
            pts = sorted((r["params"]["n"], r["us_per_delivery"], r.get("partial"))
                         for r in recs if r["contender"] == name and _num(r.get("us_per_delivery")))
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name,
                    color=colors.get(name, "grey"))
            for n, us, partial in pts:
                if partial:
                    ax.plot([n], [us], "o", mfc="none", mec="black", ms=10)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("subscribers N")
        ax.set_ylabel("server CPU µs per delivery")
        ax.set_title("burst SSE (1000 messages, 100 per iteration); circled: capped, partial",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(directory, "sweep.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    recs = [r for r in _records(doc, "latency") if r.get("latency")]
    if recs:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        names = [r["contender"] for r in recs]
        x = range(len(recs))
        for offset, key, label in ((-0.2, "p50_ms", "p50"), (0.2, "p99_ms", "p99")):
            ax.bar([i + offset for i in x], [r["latency"][key] for r in recs], width=0.4,
                   label=label, color=[colors.get(c, "grey") for c in names],
                   alpha=0.6 if key == "p50_ms" else 1.0, edgecolor="black")
        ax.set_yscale("log")
        ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("latency ms (log); left p50, right p99")
        p = recs[0]["params"]
        ax.set_title(f"latency SSE: N={p['n']}, {p['rate']} msg/s", fontsize=9)
        fig.tight_layout()
        path = os.path.join(directory, "latency.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths

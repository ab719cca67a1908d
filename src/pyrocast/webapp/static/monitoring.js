/* Monitoring page: plotly charts over /api/monitoring, refreshed every 10 s (short windows) to 60 s (long ones).
   Every time on the page is UTC, as on the feedback and models pages (the store and the charts' data are UTC). */
"use strict";

(function () {
  const initial = JSON.parse(document.getElementById("monitoring-data").textContent);
  const windowParam = new URLSearchParams(location.search).get("window") || initial.window || "1h";
  const COLORS = { champion: "#2563eb", challenger: "#f97316", "champion-fallback": "#a855f7", errors: "#dc2626" };
  const PALETTE = ["#2563eb", "#f97316", "#16a34a", "#a855f7", "#0891b2", "#ca8a04", "#db2777"];
  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d", "toImage"] };
  const MUTED = "#5f6673";

  let current = initial;

  function layout(yTitle, empty, extra) {
    const base = {
      margin: { l: 56, r: 12, t: 8, b: 48 },
      height: 260,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#374151" },
      // plotly draws ISO times as written, without converting them: these are UTC, and the axis says so.
      xaxis: { type: "date", gridcolor: "#eef0f3", range: [current.since, current.until], title: { text: "time (UTC)", standoff: 6 } },
      yaxis: { title: { text: yTitle }, gridcolor: "#eef0f3", rangemode: "tozero" },
      // The rollout-event markers live on their own 0-1 axis, at the top of the plot.
      yaxis2: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true },
      legend: { orientation: "h", y: 1.12, x: 0 },
      hovermode: "x unified",
      shapes: eventShapes(current),
      annotations: empty ? [{
        text: "No data yet in this window", xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false,
        font: { color: MUTED, size: 13 },
      }] : [],
    };
    return Object.assign(base, extra || {});
  }

  function utcTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().slice(11, 19) + " UTC";
  }

  function utcDateTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  /** "per 30 s", "per minute", "per 30 min", "per 3 h", "per day": a bucket width people read at a glance. */
  function perBucket(s) {
    if (s % 86400 === 0) return s === 86400 ? "per day" : "per " + s / 86400 + " days";
    if (s % 3600 === 0) return s === 3600 ? "per hour" : "per " + s / 3600 + " h";
    if (s % 60 === 0) return s === 60 ? "per minute" : "per " + s / 60 + " min";
    return s === 1 ? "per second" : "per " + s + " s";
  }

  function duration(s) {
    if (s < 90) return Math.max(1, Math.round(s)) + " s";
    if (s < 90 * 60) return Math.round(s / 60) + " min";
    if (s < 48 * 3600) return (s / 3600).toFixed(s < 10 * 3600 ? 1 : 0).replace(/\.0$/, "") + " h";
    return (s / 86400).toFixed(1).replace(/\.0$/, "") + " days";
  }

  function rateText(perSecond) {
    const r = perSecond || 0;
    if (r >= 1) return r.toFixed(1) + " per second";
    if (r * 60 >= 0.1) return (60 * r).toFixed(r * 60 >= 10 ? 0 : 1) + " per minute";
    return (3600 * r).toFixed(r * 3600 >= 10 ? 0 : 1) + " per hour";
  }

  /** The request rate over the time the data covers: from the first request in the window to its end, never
      averaged over the empty hours before the first request (a 7 d window with 10 minutes of traffic). */
  function rateKpi(d) {
    const req = d.requests;
    if (!req.total) return "no requests in this window";
    const first = req.requests.findIndex(function (n) { return n > 0; });
    const until = Date.parse(d.until);
    const since = first < 0 ? Date.parse(d.since) : Math.max(Date.parse(d.since), Date.parse(req.t[first]));
    const seconds = Math.max(d.bucket_s, (until - since) / 1000);
    return rateText(req.total / seconds) + " over the last " + duration(seconds);
  }

  function eventText(e) {
    let s = "rollout " + e.action + (e.mode ? " (" + e.mode + ")" : "");
    if (e.champion_version) s += " · champion v" + e.champion_version;
    if (e.challenger_version) s += " · challenger v" + e.challenger_version;
    if (e.reason) s += " · " + e.reason;
    return s + " · " + utcTime(e.ts);
  }

  function eventShapes(d) {
    return (d.events || []).map(function (e) {
      return { type: "line", xref: "x", yref: "paper", x0: e.ts, x1: e.ts, y0: 0, y1: 1, line: { color: "#9ca3af", width: 1, dash: "dot" } };
    });
  }

  // Shapes take no hover text: a marker on top of each dotted line carries what happened.
  function eventTrace(d) {
    const ev = d.events || [];
    if (!ev.length) return [];
    return [{
      x: ev.map(function (e) { return e.ts; }), y: ev.map(function () { return 1; }), yaxis: "y2",
      type: "scatter", mode: "markers", cliponaxis: false, showlegend: false, name: "rollout",
      marker: { symbol: "triangle-down", size: 9, color: "#6b7280" },
      hovertext: ev.map(eventText), hovertemplate: "%{hovertext}<extra></extra>",
    }];
  }

  function draw(d) {
    current = d;
    const req = d.requests, lat = d.latency, tr = d.traffic, acc = d.accuracy;
    const events = eventTrace(d);
    Plotly.react("chart-requests", [
      { x: req.t, y: req.rate_per_s, name: "requests/s", type: "scatter", mode: "lines", line: { color: COLORS.champion, shape: "hv" }, fill: "tozeroy", fillcolor: "rgba(37,99,235,.12)" },
      { x: req.t, y: req.errors.map(function (n) { return n / d.bucket_s; }), name: "failed/s", type: "scatter", mode: "lines", line: { color: COLORS.errors, shape: "hv" } },
    ].concat(events), layout("per second", !req.total), CONFIG);

    const latencyEmpty = !lat.p50.some(function (x) { return x !== null && x !== undefined; });
    Plotly.react("chart-latency", ["p50", "p95", "p99"].map(function (k, i) {
      return { x: lat.t, y: lat[k], name: k, type: "scatter", mode: "lines+markers", connectgaps: false, marker: { size: 4 }, line: { color: ["#16a34a", "#ca8a04", "#dc2626"][i] } };
    }).concat(events), layout("ms", latencyEmpty), CONFIG);

    const variants = Object.keys(tr.variants);
    Plotly.react("chart-traffic", (variants.length ? variants.map(function (v, i) {
      return { x: tr.t, y: tr.variants[v], name: v, type: "bar", marker: { color: COLORS[v] || PALETTE[i % PALETTE.length] } };
    }) : [{ x: tr.t, y: tr.t.map(function () { return 0; }), name: "no answers", type: "bar", showlegend: false }]).concat(events),
    layout("answers " + perBucket(d.bucket_s), !variants.length, { barmode: "stack" }), CONFIG);

    const versions = Object.keys(acc.versions);
    Plotly.react("chart-accuracy", versions.map(function (v, i) {
      const a = acc.versions[v];
      return {
        x: acc.t, y: a.accuracy_series, name: "v" + v, type: "scatter", mode: "lines+markers", connectgaps: true,
        line: { color: PALETTE[i % PALETTE.length] },
        customdata: a.n_series, hovertemplate: "v" + v + ": %{y:.1%} of %{customdata}<extra></extra>",
      };
    }).concat(events), layout("accuracy", !versions.length, { yaxis: { title: { text: "accuracy" }, range: [0, 1.02], tickformat: ".0%", gridcolor: "#eef0f3" } }), CONFIG);

    document.getElementById("kpi-requests").textContent = req.total;
    document.getElementById("kpi-rate").textContent = rateKpi(d);
    document.getElementById("kpi-errors").textContent = Pyrocast.fmtPct(req.error_rate);
    document.getElementById("kpi-failed").textContent = req.failed + " failed requests";
    const o = lat.overall;
    const f = function (x) { return x === null || x === undefined ? "–" : x < 10 ? x.toFixed(1) : Math.round(x).toString(); };
    document.getElementById("kpi-latency").textContent = f(o.p50) + " / " + f(o.p95) + " / " + f(o.p99);
    document.getElementById("kpi-labelled").textContent = versions.reduce(function (s, v) { return s + acc.versions[v].n; }, 0);

    const body = document.querySelector("#accuracy-table tbody");
    body.textContent = "";
    versions.forEach(function (v) {
      const a = acc.versions[v];
      const tr = document.createElement("tr");
      const cells = [
        "v" + v, Pyrocast.fmtPct(a.accuracy), Pyrocast.fmtPct(a.low) + " – " + Pyrocast.fmtPct(a.high), a.n, a.served, a.copies,
        Object.keys(a.by_source).map(function (s) { return s + " " + a.by_source[s]; }).join(", "),
      ];
      cells.forEach(function (c, i) {
        const td = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) td.scope = "row";
        td.textContent = c;
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    document.getElementById("accuracy-empty").hidden = versions.length > 0;
    // The time the data was read (the server's clock, UTC), not the browser's local time.
    const updated = document.getElementById("updated");
    updated.textContent = "Updated " + utcTime(d.until) + ".";
    updated.title = "Data up to " + utcDateTime(d.until);
  }

  draw(initial);
  // Short windows move fast; long ones are costly to recompute and barely change in a minute.
  const every = { "15m": 10000, "1h": 10000, "6h": 30000 }[windowParam] || 60000;
  setInterval(async function () {
    if (document.hidden) return;
    const r = await Pyrocast.api("GET", "/api/monitoring?window=" + encodeURIComponent(windowParam));
    if (r.ok) draw(r.data);
    else document.getElementById("updated").textContent = "Could not refresh: " + r.error;
  }, every);
})();

/* Monitoring page: plotly charts over /api/monitoring, refreshed every 10 s (short windows) to 60 s (long ones). */
"use strict";

(function () {
  const initial = JSON.parse(document.getElementById("monitoring-data").textContent);
  const windowParam = new URLSearchParams(location.search).get("window") || initial.window || "1h";
  const COLORS = { champion: "#2563eb", challenger: "#f97316", "champion-fallback": "#a855f7", errors: "#dc2626" };
  const PALETTE = ["#2563eb", "#f97316", "#16a34a", "#a855f7", "#0891b2", "#ca8a04", "#db2777"];
  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d", "toImage"] };

  function layout(yTitle, extra) {
    return Object.assign({
      margin: { l: 52, r: 12, t: 8, b: 36 },
      height: 260,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#374151" },
      xaxis: { type: "date", gridcolor: "#eef0f3", range: [current.since, current.until] },
      yaxis: { title: { text: yTitle }, gridcolor: "#eef0f3", rangemode: "tozero" },
      legend: { orientation: "h", y: 1.12, x: 0 },
      hovermode: "x unified",
      shapes: eventShapes(current),
    }, extra || {});
  }

  let current = initial;

  function rateText(perSecond) {
    const r = perSecond || 0;
    if (r >= 1) return r.toFixed(1) + " per second";
    return (60 * r).toFixed(r * 60 >= 10 ? 0 : 1) + " per minute";
  }

  function eventShapes(d) {
    return (d.events || []).map(function (e) {
      return { type: "line", xref: "x", yref: "paper", x0: e.ts, x1: e.ts, y0: 0, y1: 1, line: { color: "#9ca3af", width: 1, dash: "dot" } };
    });
  }

  function draw(d) {
    current = d;
    const req = d.requests, lat = d.latency, tr = d.traffic, acc = d.accuracy;
    Plotly.react("chart-requests", [
      { x: req.t, y: req.rate_per_s, name: "requests/s", type: "scatter", mode: "lines", line: { color: COLORS.champion, shape: "hv" }, fill: "tozeroy", fillcolor: "rgba(37,99,235,.12)" },
      { x: req.t, y: req.errors.map(function (n) { return n / d.bucket_s; }), name: "failed/s", type: "scatter", mode: "lines", line: { color: COLORS.errors, shape: "hv" } },
    ], layout("per second"), CONFIG);

    Plotly.react("chart-latency", ["p50", "p95", "p99"].map(function (k, i) {
      return { x: lat.t, y: lat[k], name: k, type: "scatter", mode: "lines+markers", connectgaps: false, marker: { size: 4 }, line: { color: ["#16a34a", "#ca8a04", "#dc2626"][i] } };
    }), layout("ms"), CONFIG);

    const variants = Object.keys(tr.variants);
    Plotly.react("chart-traffic", variants.length ? variants.map(function (v, i) {
      return { x: tr.t, y: tr.variants[v], name: v, type: "bar", marker: { color: COLORS[v] || PALETTE[i % PALETTE.length] } };
    }) : [{ x: tr.t, y: tr.t.map(function () { return 0; }), name: "no answers", type: "bar" }], layout("answers per " + d.bucket_s + " s", { barmode: "stack" }), CONFIG);

    const versions = Object.keys(acc.versions);
    Plotly.react("chart-accuracy", versions.map(function (v, i) {
      const a = acc.versions[v];
      return {
        x: acc.t, y: a.accuracy_series, name: "v" + v, type: "scatter", mode: "lines+markers", connectgaps: true,
        line: { color: PALETTE[i % PALETTE.length] },
        customdata: a.n_series, hovertemplate: "v" + v + ": %{y:.1%} of %{customdata}<extra></extra>",
      };
    }), layout("accuracy", { yaxis: { title: { text: "accuracy" }, range: [0, 1.02], tickformat: ".0%", gridcolor: "#eef0f3" } }), CONFIG);

    document.getElementById("kpi-requests").textContent = req.total;
    document.getElementById("kpi-rate").textContent = rateText(req.mean_rate_per_s);
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
    document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString() + ".";
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

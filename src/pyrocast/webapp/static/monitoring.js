/* Monitoring page: plotly charts over /api/monitoring, refreshed every 10 s (short windows) to 60 s (long ones).
   Every time on the page is UTC, as on the feedback and models pages (the store and the charts' data are UTC).
   One rule places every bucket: the server gives each its [start, end) inside the window (the first may start
   late, the one running now ends now); bars are centred on the middle with the bucket's width, line points sit
   on the same middle, and the x axis runs from the window's start to now. A bucket the window holds only in part
   is "partial": drawn hollow (lines) or hatched (bars) at the rate of the time it covers, and with no rate at
   all (a gap) when that is under a quarter of its width (`rated`): one request in 2 s is not 30 per minute. */
"use strict";

(function () {
  const initial = JSON.parse(document.getElementById("monitoring-data").textContent);
  const windowParam = new URLSearchParams(location.search).get("window") || initial.window || "1h";
  const COLORS = { champion: "#2563eb", challenger: "#f97316", "champion-fallback": "#a855f7", errors: "#dc2626" };
  const PALETTE = ["#2563eb", "#f97316", "#16a34a", "#a855f7", "#0891b2", "#ca8a04", "#db2777"];
  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d", "toImage"] };
  const MUTED = "#5f6673";

  let current = initial;

  /** A chart's layout: `empty` is the note written inside an empty chart (its y axis then shows no made-up scale),
      `yaxis` adds to the y axis. */
  function layout(yTitle, empty, yaxis, extra) {
    const base = {
      // Labels, titles and the legend push these out as far as they need (automargin); the plot keeps the rest.
      margin: { l: 48, r: 12, t: 8, b: 40 },
      height: 290,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#374151" },
      // plotly draws ISO times as written, without converting them: these are UTC, and the axis says so.
      // The x labels stand off the axis: the first one, near the left edge, ran into the y axis's "0" label.
      xaxis: {
        type: "date", gridcolor: "#eef0f3", range: [current.since, current.until], automargin: true,
        ticklabelstandoff: 8, title: { text: "time (UTC)", standoff: 4 }, hoverformat: "%H:%M:%S UTC",
      },
      yaxis: Object.assign({
        title: { text: yTitle, standoff: 8 }, gridcolor: "#eef0f3", rangemode: "tozero", automargin: true,
        ticklabelstandoff: 4, showticklabels: !empty,
      }, yaxis || {}),
      // The rollout-event markers live on their own 0-1 axis, at the top of the plot.
      yaxis2: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true },
      // Above the plot, clear of the event markers on its top edge: a legend over the plot hid data at 100 %.
      legend: { orientation: "h", x: 0, xanchor: "left", y: 1.04, yanchor: "bottom" },
      showlegend: !empty,  // a legend of lines an empty chart does not draw
      hovermode: "x unified",
      shapes: eventShapes(current),
      annotations: empty ? [{
        text: empty, xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false,
        font: { color: MUTED, size: 13 },
      }] : [],
    };
    return Object.assign(base, extra || {});
  }

  /** Each bucket as drawn: its middle (ISO), its width (ms), the seconds it covers, its span as hover text,
      whether it is `partial` (the window holds part of it) and `rated` (it covers enough for a rate). */
  function bucketsOf(s) {
    return s.start.map(function (a, i) {
      const t0 = Date.parse(a), t1 = Date.parse(s.end[i]);
      return {
        mid: new Date((t0 + t1) / 2).toISOString(), width: t1 - t0, seconds: s.seconds[i], text: bucketText(t0, t1),
        partial: s.seconds[i] < current.bucket_s, rated: s.rated ? s.rated[i] : true,
      };
    });
  }

  /** "partial: 1 request in 1.5 s": what a bucket the window holds only in part counted, over the time it covers. */
  function partialText(n, what, seconds) {
    return "partial: " + n + " " + what + (n === 1 ? "" : "s") + " in " + (seconds < 90 ? sig(seconds) + " s" : duration(seconds));
  }

  /** "20:30–20:31 UTC", "20:31:00–20:31:23 UTC" (the bucket running now), "2026-06-01 18:00–21:00 UTC". */
  function bucketText(t0, t1) {
    const a = new Date(t0).toISOString(), b = new Date(t1).toISOString();
    const whole = a.slice(17, 19) === "00" && b.slice(17, 19) === "00";
    const hm = function (iso) { return iso.slice(11, whole ? 16 : 19); };
    const long = Date.parse(current.until) - Date.parse(current.since) > 86400000;
    const day = function (iso) { return long ? iso.slice(0, 10) + " " : ""; };
    return day(a) + hm(a) + "–" + (day(b) === day(a) ? "" : day(b)) + hm(b) + " UTC";
  }

  /** The unit that keeps a rate readable (never "100µ per second"): per second, per minute or per hour. */
  function rateUnit(peakPerSecond) {
    if (peakPerSecond >= 1) return { per: "second", k: 1 };
    if (peakPerSecond * 60 >= 1) return { per: "minute", k: 60 };
    return { per: "hour", k: 3600 };
  }

  function mids(bs) {
    return bs.map(function (b) { return b.mid; });
  }

  /** The hover of a chart: an invisible point on every bucket's middle whose text names the bucket ("20:30–20:31
      UTC") and gives that bucket's own values, `lines(i)`. The drawn traces take no hover: plotly's unified hover
      showed, for a series with no value in the bucket under the pointer, the nearest value of another bucket. */
  function bucketTrace(bs, lines) {
    return {
      x: mids(bs), y: bs.map(function () { return 0; }), yaxis: "y2", type: "scatter", mode: "markers", showlegend: false,
      name: "bucket", marker: { size: 1, opacity: 0 }, hovertemplate: "%{text}<extra></extra>",
      text: bs.map(function (b, i) { return ["<b>" + b.text + "</b>"].concat(lines(i)).join("<br>"); }),
    };
  }

  /** A hover line with the series' colour: "● p95 41 ms". */
  function line(color, text) {
    return '<span style="color:' + color + '">●</span> ' + text;
  }

  /** 3 significant digits, no trailing zeros: 0.0926, 7.6, 41, 1250. */
  function sig(x) {
    return x >= 1000 ? Math.round(x).toString() : String(Number(x.toPrecision(3)));
  }

  /** Nothing to draw, but plotly draws an axis (and its title) only under a trace. */
  function placeholder(bs) {
    return { x: mids(bs), y: bs.map(function () { return 0; }), type: "scatter", mode: "none", showlegend: false, hoverinfo: "skip" };
  }

  function finite(xs) {
    return xs.filter(function (x) { return x !== null && x !== undefined && isFinite(x); });
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
    const until = Date.parse(d.until);
    const since = req.first_at ? Math.max(Date.parse(d.since), Date.parse(req.first_at)) : Date.parse(d.since);
    const seconds = (until - since) / 1000;
    // Less than a minute of traffic has no meaningful rate: say what it was.
    if (seconds < 60) return req.total + (req.total === 1 ? " request" : " requests") + " in the last " + duration(Math.max(seconds, 1));
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
    // What an empty chart says: nothing at all yet, or nothing of its kind (requests that all failed have no
    // latency and no answers; labels arrive after the answers they judge).
    const noData = req.total ? "" : "No data yet in this window";
    const noAnswers = "No answers in this window" + (req.failed === req.total ? ":<br>all " + req.total + " requests failed" : "");

    const rb = bucketsOf(req);
    // The unit follows whole buckets only: a partial bucket's rate is noisier and must not switch the axis to
    // "per second" (only when no bucket is whole, e.g. a window shorter than one, do partial ones decide).
    const whole = finite(req.rate_per_s.filter(function (_, i) { return !rb[i].partial; }));
    const ru = rateUnit(Math.max.apply(null, [0].concat(whole.length ? whole : finite(req.rate_per_s))));
    const scaled = function (r) { return r === null || r === undefined ? null : r * ru.k; };
    Plotly.react("chart-requests", [bucketTrace(rb, function (i) {
      const rate = req.rate_per_s[i] === null ? "" : " (" + sig(req.rate_per_s[i] * ru.k) + " per " + ru.per + ")";
      const count = rb[i].partial ? partialText(req.requests[i], "request", rb[i].seconds) : "requests " + req.requests[i];
      return [line(COLORS.champion, count + rate), line(COLORS.errors, "failed " + req.errors[i])];
    }),
      {
        x: mids(rb), y: req.rate_per_s.map(scaled), name: "requests", type: "scatter", mode: "lines+markers",
        connectgaps: false, line: { color: COLORS.champion, width: 1.5 }, fill: "tozeroy", fillcolor: "rgba(37,99,235,.12)",
        marker: {
          symbol: rb.map(function (b) { return b.partial ? "circle-open" : "circle"; }),
          size: rb.map(function (b) { return b.partial ? 6 : 3; }),
        },
        hoverinfo: "skip",
      },
      {
        x: mids(rb), y: req.errors_per_s.map(scaled), name: "failed", type: "scatter", mode: "lines", connectgaps: false,
        line: { color: COLORS.errors, width: 1.5 }, hoverinfo: "skip",
      },
    ].concat(events), layout("requests per " + ru.per, noData), CONFIG);

    const lb = bucketsOf(lat);
    const slowest = Math.max.apply(null, [0].concat(finite(lat.p99)));
    const lu = slowest >= 10000 ? { name: "s", k: 0.001 } : { name: "ms", k: 1 };  // "80k ms" reads badly
    const latencyEmpty = !finite(lat.p50).length;
    const LAT = ["#16a34a", "#ca8a04", "#dc2626"];
    Plotly.react("chart-latency", [bucketTrace(lb, function (j) {
      if (lat.p50[j] === null) return ["no answers"];
      return ["p50", "p95", "p99"].map(function (k, i) { return line(LAT[i], k + " " + sig(lat[k][j] * lu.k) + " " + lu.name); });
    })].concat(["p50", "p95", "p99"].map(function (k, i) {
      return {
        x: mids(lb), y: lat[k].map(function (x) { return x === null ? null : x * lu.k; }), name: k, type: "scatter", mode: "lines+markers",
        connectgaps: false, marker: { size: 4 }, line: { color: LAT[i], width: 1.5 }, hoverinfo: "skip",
      };
    })).concat(events), layout("latency (" + lu.name + ")", latencyEmpty && (noData || noAnswers)), CONFIG);

    const tb = bucketsOf(tr);
    const variants = Object.keys(tr.variants);
    // A partial bucket's bar (hatched) is drawn at the rate of a whole one ("answers per minute" over the 20 s it
    // holds), so the bucket running now is not read as a drop; one under a quarter of its width gets no bar (its
    // count blown up by up to 60x was a spike). Its hover gives the count and the seconds.
    const scale = tb.map(function (b) { return !b.rated ? null : b.partial ? d.bucket_s / b.seconds : 1; });
    const peak = Math.max.apply(null, [0].concat(tb.map(function (_, j) {
      return variants.reduce(function (s, v) { return s + tr.variants[v][j] * (scale[j] || 0); }, 0);
    })));
    const variantColor = function (v, i) { return COLORS[v] || PALETTE[i % PALETTE.length]; };
    Plotly.react("chart-traffic", [bucketTrace(tb, function (j) {
      const sum = variants.reduce(function (s, v) { return s + tr.variants[v][j]; }, 0);
      if (!sum) return [tb[j].partial ? partialText(0, "answer", tb[j].seconds) : "no answers"];
      return variants.map(function (v, i) {
        const n = tr.variants[v][j];
        return line(variantColor(v, i), tb[j].partial ? v + " " + partialText(n, "answer", tb[j].seconds) : v + " " + n);
      });
    })].concat(variants.length ? variants.map(function (v, i) {
      return {
        x: mids(tb), y: tr.variants[v].map(function (n, j) { return scale[j] === null ? null : n * scale[j]; }),
        width: tb.map(function (b) { return b.width; }), name: v, type: "bar", hoverinfo: "skip",
        marker: {
          color: variantColor(v, i), line: { width: 0.5, color: "#fff" },
          pattern: { shape: tb.map(function (b) { return b.partial ? "/" : ""; }), fillmode: "overlay", size: 6, solidity: 0.3 },
        },
      };
    }) : [placeholder(tb)]).concat(events),
    layout("answers " + perBucket(d.bucket_s), !variants.length && (noData || noAnswers),
      peak < 5 ? { tickmode: "linear", tick0: 0, dtick: 1 } : {}, { barmode: "stack", bargap: 0 }), CONFIG);

    const ab = bucketsOf(acc);
    const versions = Object.keys(acc.versions);
    Plotly.react("chart-accuracy", [bucketTrace(ab, function (j) {
      const seen = versions.filter(function (v) { return acc.versions[v].n_series[j] > 0; });
      if (!seen.length) return ["no labelled answers"];
      return seen.map(function (v) {
        const a = acc.versions[v];
        return line(PALETTE[versions.indexOf(v) % PALETTE.length], "v" + v + " " + Pyrocast.fmtPct(a.accuracy_series[j]) + " of " + a.n_series[j]);
      });
    })].concat(versions.length ? [] : [placeholder(ab)], versions.map(function (v, i) {
      const a = acc.versions[v];
      // No line across buckets without labels: a straight line there drew accuracy nobody measured.
      return {
        x: mids(ab), y: a.accuracy_series, name: "v" + v, type: "scatter", mode: "lines+markers", connectgaps: false,
        marker: { size: 5 }, line: { color: PALETTE[i % PALETTE.length], width: 1.5 },
        hoverinfo: "skip",
      };
    })).concat(events), layout("accuracy", !versions.length && (noData || "No labelled answers in this window yet"),
      { range: [0, 1.02], tickformat: ".0%", rangemode: "normal" }), CONFIG);

    document.getElementById("kpi-requests").textContent = req.total;
    document.getElementById("kpi-rate").textContent = rateKpi(d);
    document.getElementById("kpi-errors").textContent = Pyrocast.fmtPct(req.error_rate);
    document.getElementById("kpi-failed").textContent = req.failed + (req.failed === 1 ? " failed request" : " failed requests");
    const o = lat.overall;
    const f = function (x) { return x === null || x === undefined ? "–" : x < 10 ? x.toFixed(1) : Math.round(x).toString(); };
    document.getElementById("kpi-latency").textContent = f(o.p50) + " / " + f(o.p95) + " / " + f(o.p99);
    // Requests, not answers: a shadow or comparison copy of a labelled request is judged too, but is no second request.
    document.getElementById("kpi-labelled").textContent = versions.reduce(function (s, v) { return s + acc.versions[v].served; }, 0);
    const copies = versions.reduce(function (s, v) { return s + acc.versions[v].copies; }, 0);
    document.getElementById("kpi-labelled-note").textContent = "with feedback or a replayed label" +
      (copies ? "; " + copies + " shadow or comparison cop" + (copies === 1 ? "y" : "ies") + " judged too" : "");

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

/* Pyrocast web app: helpers shared by every page (same-origin JSON calls, the service status in the nav bar). */
"use strict";

window.Pyrocast = (function () {
  /** Call one of the web app's own /api routes; resolves to {ok, status, data, error, hint}. Never throws. */
  async function api(method, url, body) {
    const opts = { method: method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(url, opts);
    } catch (e) {
      return { ok: false, status: 0, error: "The web app does not answer.", hint: "Check your connection, or whether the web app is still running." };
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (resp.ok) return { ok: true, status: resp.status, data: data };
    return {
      ok: false,
      status: resp.status,
      data: data,
      error: (data && data.error) || "The request failed (HTTP " + resp.status + ").",
      hint: data && data.hint,
    };
  }

  function fmtPct(x, digits) {
    if (x === null || x === undefined || isNaN(x)) return "–";
    const d = digits === undefined ? 1 : digits;
    const smallest = Math.pow(10, -d);
    if (x > 0 && 100 * x < smallest / 2) return "<" + smallest + "%"; // some, never "0.0%"
    return (100 * x).toFixed(d) + "%";
  }

  function fmtMs(x) {
    if (x === null || x === undefined || isNaN(x)) return "–";
    return x < 10 ? x.toFixed(1) + " ms" : Math.round(x) + " ms";
  }

  async function refreshStatus() {
    const box = document.getElementById("gateway-status");
    if (!box) return;
    const text = box.querySelector(".status-text");
    const r = await api("GET", "/api/status");
    box.classList.remove("up", "down", "degraded");
    if (!r.ok || !r.data || r.data.gateway === "down") {
      box.classList.add("down");
      text.textContent = "Prediction service down";
      box.title = (r.data && r.data.error) || r.error || "The gateway does not answer";
      return;
    }
    const champ = r.data.backends && r.data.backends.champion;
    const warnings = r.data.warnings || [];
    if (r.data.gateway === "ok" && warnings.length) {
      // Answering, but something on call must know of (the store refusing writes, the explainer gone).
      box.classList.add("degraded");
      text.textContent = (champ && champ.model ? "Live · champion v" + champ.model.version : "Live") +
        " · " + warnings.length + (warnings.length === 1 ? " warning" : " warnings");
      box.title = warnings.join("\n");
    } else if (r.data.gateway === "ok") {
      box.classList.add("up");
      text.textContent = champ && champ.model ? "Live · champion v" + champ.model.version : "Live";
      box.title = "The gateway and the champion model answer";
    } else {
      box.classList.add("degraded");
      text.textContent = "Model service down";
      box.title = "The gateway answers but the champion model service does not";
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    refreshStatus();
    setInterval(refreshStatus, 15000);
  });

  return { api: api, fmtPct: fmtPct, fmtMs: fmtMs, refreshStatus: refreshStatus };
})();

/* Map page: pick a place (click or type), show the model's answer, the tile and its heatmap, take feedback. */
"use strict";

(function () {
  const cfg = JSON.parse(document.getElementById("map-config").textContent);
  const area = cfg.area;
  const $ = (id) => document.getElementById(id);
  const form = $("place-form"), latIn = $("lat"), lonIn = $("lon");
  const errBox = $("predict-error"), busy = $("busy"), result = $("result");
  let seq = 0; // answers to an older request are ignored
  let current = null; // {request_id, label, ...} of the answer on screen
  let heatUrl = null;

  // --- the map ---------------------------------------------------------------------------------------------
  const bounds = L.latLngBounds([area.lat_min, area.lon_min], [area.lat_max, area.lon_max]);
  const padded = bounds.pad(0.15);
  const map = L.map("map", {
    minZoom: cfg.min_zoom,
    maxZoom: cfg.max_zoom,
    maxBounds: padded,
    maxBoundsViscosity: 0.9,
    zoomSnap: 1,
  });
  L.tileLayer(cfg.tiles, {
    minZoom: cfg.min_zoom,
    maxZoom: cfg.max_zoom,
    bounds: padded,
    attribution: cfg.synthetic_tiles ? "Synthetic imagery · Pyrocast" : "Imagery: configured tile server",
  }).addTo(map);
  L.rectangle(bounds, { color: "#f97316", weight: 2, fill: false, dashArray: "6 6", interactive: false }).addTo(map);
  map.fitBounds(bounds);
  let marker = null;

  map.on("click", function (e) {
    latIn.value = e.latlng.lat.toFixed(5);
    lonIn.value = e.latlng.lng.toFixed(5);
    predict();
  });

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    predict();
  });

  // --- validation (the server checks the same rules) -------------------------------------------------------
  function parseCoord(text, name) {
    const s = String(text).trim();
    if (s === "") return { error: name + " is missing." };
    if (!/^[-+]?(\d+(\.\d*)?|\.\d+)$/.test(s))
      return { error: name + " must be a number, like " + (name === "Latitude" ? "46.25" : "-73.5") + "." };
    return { value: parseFloat(s) };
  }

  function validate() {
    const lat = parseCoord(latIn.value, "Latitude");
    const lon = parseCoord(lonIn.value, "Longitude");
    if (lat.error) return { error: lat.error, field: latIn };
    if (lon.error) return { error: lon.error, field: lonIn };
    if (lat.value < -90 || lat.value > 90)
      return { error: "Latitude " + lat.value + " is not on Earth: it must lie between -90 and 90.", field: latIn };
    if (lon.value < -180 || lon.value > 180)
      return { error: "Longitude " + lon.value + " is not on Earth: it must lie between -180 and 180.", field: lonIn };
    if (lat.value < area.lat_min || lat.value > area.lat_max || lon.value < area.lon_min || lon.value > area.lon_max)
      return {
        error: "(" + lat.value + ", " + lon.value + ") is outside the region " + area.name + ": latitude " +
          area.lat_min + " to " + area.lat_max + ", longitude " + area.lon_min + " to " + area.lon_max + ".",
        field: lat.value < area.lat_min || lat.value > area.lat_max ? latIn : lonIn,
      };
    return { lat: lat.value, lon: lon.value };
  }

  function showError(message, hint) {
    errBox.innerHTML = "";
    const strong = document.createElement("strong");
    strong.textContent = message;
    errBox.appendChild(strong);
    if (hint) {
      const p = document.createElement("p");
      p.className = "hint";
      p.textContent = hint;
      errBox.appendChild(p);
    }
    errBox.hidden = false;
  }

  function clearError() {
    errBox.hidden = true;
    errBox.textContent = "";
    latIn.removeAttribute("aria-invalid");
    lonIn.removeAttribute("aria-invalid");
  }

  // --- prediction ------------------------------------------------------------------------------------------
  async function predict() {
    clearError();
    const v = validate();
    if (v.error) {
      v.field.setAttribute("aria-invalid", "true");
      showError(v.error, "Click on the map inside the outlined region, or type coordinates inside it.");
      return;
    }
    const mine = ++seq;
    if (marker) marker.setLatLng([v.lat, v.lon]);
    else marker = L.circleMarker([v.lat, v.lon], { radius: 8, color: "#111827", weight: 2, fillColor: "#f97316", fillOpacity: 0.9 }).addTo(map);
    busy.hidden = false;
    $("predict-btn").disabled = true;
    const r = await Pyrocast.api("POST", "/api/predict", { lat: v.lat, lon: v.lon });
    if (mine !== seq) return;
    busy.hidden = true;
    $("predict-btn").disabled = false;
    if (!r.ok) {
      result.hidden = true;
      showError(r.error, r.hint);
      Pyrocast.refreshStatus();
      return;
    }
    show(r.data, v.lat, v.lon);
    explain(mine, v.lat, v.lon, r.data.model.version);
  }

  function show(d, lat, lon) {
    current = d;
    const fire = d.label === "wildfire";
    const badge = $("label-badge");
    badge.textContent = fire ? "wildfire" : "nowildfire";
    badge.className = "badge " + (fire ? "fire" : "safe");
    $("prob-value").textContent = Pyrocast.fmtPct(d.probability, 1);
    $("prob-fill").style.width = (100 * d.probability).toFixed(1) + "%";
    $("prob-fill").className = fire ? "fire" : "safe";
    $("prob-bar").setAttribute("aria-valuenow", (100 * d.probability).toFixed(1));
    $("model").textContent = d.model.name + " v" + d.model.version;
    $("variant").textContent = d.variant;
    $("latency").textContent = Pyrocast.fmtMs(d.latency_ms);
    $("place").textContent = lat.toFixed(5) + ", " + lon.toFixed(5);
    $("request-id").textContent = d.request_id;
    $("tile-img").src = "/api/tile?lat=" + encodeURIComponent(lat) + "&lon=" + encodeURIComponent(lon);
    // A fresh answer: reset the heatmap and the feedback controls.
    const heat = $("heat-img");
    heat.hidden = true;
    heat.removeAttribute("src");
    if (heatUrl) URL.revokeObjectURL(heatUrl);
    heatUrl = null;
    $("heat-toggle").checked = false;
    $("heat-toggle").disabled = true;
    $("heat-state").textContent = "computing heatmap…";
    $("fb-right").disabled = false;
    $("fb-wrong").disabled = false;
    $("fb-label").value = "";
    $("fb-message").textContent = "";
    $("fb-message").className = "small";
    result.hidden = false;
  }

  async function explain(mine, lat, lon, version) {
    let resp;
    try {
      resp = await fetch("/api/explain", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ lat: lat, lon: lon, version: version }),
      });
    } catch (e) {
      if (mine === seq) $("heat-state").textContent = "heatmap unavailable: the web app does not answer";
      return;
    }
    if (mine !== seq) return;
    if (!resp.ok) {
      let msg = "heatmap unavailable";
      try {
        const body = await resp.json();
        if (body && body.error) msg += ": " + body.error;
      } catch (e) { /* not JSON */ }
      $("heat-state").textContent = msg;
      return;
    }
    const blob = await resp.blob();
    if (mine !== seq) return;
    heatUrl = URL.createObjectURL(blob);
    $("heat-img").src = heatUrl;
    $("heat-toggle").disabled = false;
    $("heat-state").textContent = "explains model v" + version;
  }

  $("heat-toggle").addEventListener("change", function () {
    $("heat-img").hidden = !this.checked;
  });

  // --- feedback --------------------------------------------------------------------------------------------
  async function sendFeedback(correct) {
    if (!current) return;
    const body = { request_id: current.request_id, correct: correct };
    const label = $("fb-label").value;
    if (label) body.label = label;
    const msg = $("fb-message");
    $("fb-right").disabled = true;
    $("fb-wrong").disabled = true;
    msg.className = "small";
    msg.textContent = "Saving…";
    const r = await Pyrocast.api("POST", "/api/feedback", body);
    if (!r.ok) {
      msg.className = "small error-text";
      msg.textContent = r.error + (r.hint ? " " + r.hint : "");
      $("fb-right").disabled = false;
      $("fb-wrong").disabled = false;
      return;
    }
    msg.className = "small ok-text";
    msg.textContent = "Thanks, saved: the answer was " + (r.data.correct ? "right" : "wrong") +
      " (true label: " + r.data.true_label + ").";
  }

  $("fb-right").addEventListener("click", function () { sendFeedback(true); });
  $("fb-wrong").addEventListener("click", function () { sendFeedback(false); });
})();

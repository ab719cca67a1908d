/* Map page: pick a place (click or type), show the model's answer, the tile and its heatmap, take feedback. */
"use strict";

(function () {
  const cfg = JSON.parse(document.getElementById("map-config").textContent);
  const area = cfg.area;
  const $ = (id) => document.getElementById(id);
  const form = $("place-form"), latIn = $("lat"), lonIn = $("lon");
  const errBox = $("predict-error"), busy = $("busy"), result = $("result"), panel = $("panel");
  const tileImg = $("tile-img"), tileMissing = $("tile-missing");
  const fbRight = $("fb-right"), fbWrong = $("fb-wrong"), fbMessage = $("fb-message");
  const OUTSIDE_HINT = "Click on the map inside the outlined region, or type coordinates inside it.";
  let seq = 0; // every new choice of place bumps it: answers to an older request are ignored
  let current = null; // the answer on screen ({request_id, label, ...}); null while none or while a new one loads
  let heatUrl = null;
  let lastClick = null; // {t, p} of the previous map click, to tell a double tap from two choices

  // --- the map ---------------------------------------------------------------------------------------------
  function box(r, pad) {
    return L.latLngBounds([r.lat_min - pad, r.lon_min - pad], [r.lat_max + pad, r.lon_max + pad]);
  }
  const bounds = box(area, 0);
  // The server renders tiles within tile_margin_deg of the region and refuses the rest (404). Asking a hair
  // less keeps a tile whose edge lands on the limit (rounding differs between Leaflet and the server) out.
  const tileBounds = cfg.tile_region ? box(cfg.tile_region, cfg.tile_margin_deg - 1e-6) : null;
  const viewBounds = tileBounds || box(area, cfg.tile_margin_deg);
  const map = L.map("map", {
    minZoom: cfg.min_zoom,
    maxZoom: cfg.max_zoom,
    maxBounds: viewBounds,
    maxBoundsViscosity: 0.9,
    zoomSnap: 1,
  });
  const tileOptions = {
    minZoom: cfg.min_zoom,
    maxZoom: cfg.max_zoom,
    attribution: cfg.synthetic_tiles ? "Synthetic imagery · Pyrocast" : "Imagery: configured tile server",
  };
  if (tileBounds) tileOptions.bounds = tileBounds;
  L.tileLayer(cfg.tiles, tileOptions).addTo(map);
  L.rectangle(bounds, { color: "#f97316", weight: 2, fill: false, dashArray: "6 6", interactive: false }).addTo(map);
  map.fitBounds(bounds);
  // Never zoomed out past the tiles there are: a view wider than them showed grey bands at its sides (at the
  // fitted zoom on 1280x720 and 1920x1080, and wider at each zoom out). The least zoom is the one whose view fits
  // inside the tile bounds, for the window's size now.
  function keepInsideTiles() {
    const least = Math.max(cfg.min_zoom, map.getBoundsZoom(viewBounds, true));
    map.setMinZoom(least);
    if (map.getZoom() < least) map.setView(bounds.getCenter(), least, { animate: false });
  }
  keepInsideTiles();
  map.on("resize", keepInsideTiles);
  let marker = null;

  map.on("click", function (e) {
    // A double-click zooms; it is not a second choice of place. The browser numbers the clicks of one gesture
    // (detail 2, 3, ...), so the first click still answers at once, without waiting to see if a second follows.
    const ev = e.originalEvent || {};
    const now = Date.now();
    const again = lastClick && now - lastClick.t < 400 && e.containerPoint.distanceTo(lastClick.p) < 12;
    lastClick = { t: now, p: e.containerPoint };
    // Some touch browsers report every tap as detail 1 (Leaflet then simulates the double tap): a second tap
    // at the same spot right after the first is the same gesture.
    if (ev.detail > 1 || again) return;
    latIn.value = e.latlng.lat.toFixed(5);
    lonIn.value = e.latlng.lng.toFixed(5);
    predict(false);
  });

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    predict(true);
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
  function setBusy(on) {
    // The Predict button stays enabled: a new place (typed + Enter, or a click) replaces the pending request.
    busy.hidden = !on;
    panel.setAttribute("aria-busy", on ? "true" : "false");
  }

  function hideAnswer() {
    current = null;
    result.hidden = true;
    result.classList.remove("stale");
  }

  function placeMarker(lat, lon) {
    if (marker) marker.setLatLng([lat, lon]);
    else marker = L.circleMarker([lat, lon], { radius: 8, color: "#111827", weight: 2, fillColor: "#f97316", fillOpacity: 0.9 }).addTo(map);
  }

  async function predict(typed) {
    clearError();
    const v = validate();
    if (v.error) {
      // This place replaces whatever was asked before: drop the pending answer and the one on screen, so an
      // answer for an older place never sits next to (or arrives under) the error for the newer one.
      ++seq;
      setBusy(false);
      hideAnswer();
      if (marker) {
        marker.remove();
        marker = null;
      }
      v.field.setAttribute("aria-invalid", "true");
      showError(v.error, OUTSIDE_HINT);
      // Typed input: take the person to the field to fix. A map click outside the region has nothing to type
      // (and focusing an input would open the keyboard on a phone).
      if (typed) v.field.focus();
      return;
    }
    const mine = ++seq;
    placeMarker(v.lat, v.lon);
    if (typed && !map.getBounds().contains([v.lat, v.lon])) map.panTo([v.lat, v.lon]);
    setBusy(true);
    if (!result.hidden) {
      // The old answer stays visible but greyed, and cannot be judged any more: feedback would go to it
      // while the person is looking at the new place.
      current = null;
      result.classList.add("stale");
      fbRight.disabled = true;
      fbWrong.disabled = true;
    }
    const r = await Pyrocast.api("POST", "/api/predict", { lat: v.lat, lon: v.lon });
    if (mine !== seq) return;
    setBusy(false);
    if (!r.ok) {
      hideAnswer();
      showError(r.error, r.hint);
      Pyrocast.refreshStatus();
      return;
    }
    try {
      show(r.data, v.lat, v.lon);
      // The place in the address: a reload shows it again and the link can be shared.
      history.replaceState(null, "", "?lat=" + v.lat.toFixed(5) + "&lon=" + v.lon.toFixed(5));
    } catch (e) {
      // A 200 of an unexpected shape (a proxy in the way, a newer gateway): say so rather than fail silently.
      hideAnswer();
      showError("The prediction service gave an answer this page cannot read.", "Try again; if it persists, check the gateway's version.");
      return;
    }
    explain(mine, v.lat, v.lon, r.data.model.version);
  }

  // The gateway's out-of-distribution warnings (one sentence per way the tile differs from the model's training
  // tiles), right under the probability they qualify: a confident number on a blank tile must not look trusted.
  // An answer without the field (an older gateway) shows none.
  function showWarnings(warnings) {
    const items = Array.isArray(warnings) ? warnings.filter((w) => typeof w === "string" && w) : [];
    const list = $("ood-list");
    list.textContent = "";
    for (const w of items) {
      const li = document.createElement("li");
      li.textContent = w;
      list.appendChild(li);
    }
    $("ood-warning").hidden = items.length === 0;
    result.classList.toggle("ood", items.length > 0);
  }

  function show(d, lat, lon) {
    const fire = d.label === "wildfire";
    const other = fire ? "nowildfire" : "wildfire";
    const badge = $("label-badge");
    badge.textContent = fire ? "wildfire" : "nowildfire";
    badge.className = "badge " + (fire ? "fire" : "safe");
    $("prob-value").textContent = Pyrocast.fmtPct(d.probability, 1);
    $("prob-fill").style.width = (100 * d.probability).toFixed(1) + "%";
    $("prob-fill").className = fire ? "fire" : "safe";
    $("prob-bar").setAttribute("aria-valuenow", (100 * d.probability).toFixed(1));
    showWarnings(d.warnings);
    $("model").textContent = d.model.name + " v" + d.model.version;
    $("variant").textContent = d.variant;
    $("latency").textContent = Pyrocast.fmtMs(d.latency_ms);
    $("place").textContent = lat.toFixed(5) + ", " + lon.toFixed(5);
    $("request-id").textContent = d.request_id;
    tileImg.hidden = false;
    tileMissing.hidden = true;
    tileImg.src = "/api/tile?lat=" + encodeURIComponent(lat) + "&lon=" + encodeURIComponent(lon);
    // A fresh answer: reset the heatmap and the feedback controls.
    const heat = $("heat-img");
    heat.hidden = true;
    heat.removeAttribute("src");
    if (heatUrl) URL.revokeObjectURL(heatUrl);
    heatUrl = null;
    $("heat-toggle").checked = false;
    $("heat-toggle").disabled = true;
    $("heat-legend").hidden = true;
    $("heat-state").textContent = "computing heatmap…";
    // The labels are two: "wrong" says which one the place is, so there is nothing else to ask.
    $("fb-explain").textContent = "Right: the place is " + d.label + ". Wrong: the place is " + other + ".";
    fbRight.disabled = false;
    fbWrong.disabled = false;
    setPressed(null);
    fbMessage.textContent = "";
    fbMessage.className = "small";
    d.verdict = null; // the verdict stored for this answer (the newest one sent), and how many were sent
    d.verdicts = 0;
    current = d;
    result.classList.remove("stale");
    result.hidden = false;
    revealOnPhone();
  }

  function revealOnPhone() {
    // One column below 900 px: the answer starts under the map, out of sight after a tap.
    if (!window.matchMedia("(max-width: 900px)").matches) return;
    if (result.getBoundingClientRect().top < window.innerHeight * 0.6) return;
    const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    result.scrollIntoView({ block: "start", behavior: still ? "auto" : "smooth" });
  }

  // A tile the gateway cannot give becomes a short note, as on the feedback page, not a broken image.
  tileImg.addEventListener("error", function () {
    if (!tileImg.getAttribute("src")) return;
    tileImg.hidden = true;
    tileMissing.hidden = false;
  });

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
    $("heat-legend").hidden = !this.checked;
  });

  // --- feedback --------------------------------------------------------------------------------------------
  // A person may change their mind: every verdict is stored (history) and the newest one counts, so the buttons
  // stay open after a save and the pressed one shows the person's newest verdict. Ground truth (a replayed test
  // label, a fire feed) outranks every verdict: the gateway's answer says whether this one counts, and the
  // confirmation says so rather than claim a label it does not give.
  function setPressed(correct) {
    fbRight.setAttribute("aria-pressed", correct === true ? "true" : "false");
    fbWrong.setAttribute("aria-pressed", correct === false ? "true" : "false");
  }

  function recorded(correct, label) {
    return "the answer was " + (correct ? "right" : "wrong") + ", so this place is recorded as " + label + ".";
  }

  const TRUTH_NAMES = { replay: "replayed test label", feed: "fire feed" };

  // The confirmation of a saved verdict, from the gateway's answer (counts, request_label, label_source).
  function confirmation(reply, verdicts, again) {
    if (reply.counts === false) {
      const what = TRUTH_NAMES[reply.label_source] || reply.label_source;
      return (again ? "Already saved" : "Stored") + "; the ground truth for this place (" + what + ": " +
        reply.request_label + ") outranks verdicts, so yours is kept as history.";
    }
    if (reply.counts !== true) {
      // The store could not be asked which label counts: say only what is certain.
      return (again ? "Already saved" : "Saved") + ": you said the answer was " +
        (reply.correct ? "right" : "wrong") + ".";
    }
    if (again) return "Already saved: " + recorded(reply.correct, reply.true_label);
    if (verdicts === 1) {
      return "Thanks, saved: " + recorded(reply.correct, reply.true_label) +
        " Changed your mind? Press " + (reply.correct ? "Wrong" : "Right") + ": your newest verdict counts.";
    }
    return "Changed: " + recorded(reply.correct, reply.true_label) + " Your " +
      verdicts + " verdicts on this answer stay stored as history; the newest one counts.";
  }

  async function sendFeedback(correct) {
    const answer = current;
    if (!answer) return;
    if (answer.verdict !== null && answer.verdict.correct === correct) {
      // The same verdict again would only add a duplicate row: say what is stored instead.
      fbMessage.className = "small ok-text";
      fbMessage.textContent = confirmation(answer.verdict, answer.verdicts, true);
      return;
    }
    // Both stay disabled while a save is in flight, so two verdicts are never stored out of the order given.
    fbRight.disabled = true;
    fbWrong.disabled = true;
    fbMessage.className = "small";
    fbMessage.textContent = "Saving…";
    // Only the verdict: with two labels the gateway derives the true label from it, so the two cannot disagree.
    const r = await Pyrocast.api("POST", "/api/feedback", { request_id: answer.request_id, correct: correct });
    // Another answer (or none) is on screen now: this confirmation belongs to the one it was sent for.
    if (current !== answer) return;
    if (!r.ok) {
      fbMessage.className = "small error-text";
      fbMessage.textContent = r.error + (r.hint ? " " + r.hint : "");
      fbRight.disabled = false;
      fbWrong.disabled = false;
      return;
    }
    answer.verdict = r.data;
    answer.verdicts += 1;
    setPressed(r.data.correct);
    fbRight.disabled = false;
    fbWrong.disabled = false;
    fbMessage.className = "small ok-text";
    fbMessage.textContent = confirmation(r.data, answer.verdicts, false);
  }

  // A link to a place (/?lat=..&lon=..) opens with its answer, checked like typed coordinates.
  const linked = new URLSearchParams(window.location.search);
  if (linked.has("lat") || linked.has("lon")) {
    latIn.value = linked.get("lat") || "";
    lonIn.value = linked.get("lon") || "";
    predict(true);
  }

  fbRight.addEventListener("click", function () { sendFeedback(true); });
  fbWrong.addEventListener("click", function () { sendFeedback(false); });
})();

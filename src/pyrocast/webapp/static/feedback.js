/* Feedback page: a thumbnail whose tile cannot be fetched (the gateway is down) becomes a short note.
   Loaded in <head> so that the (capturing) listener is there before any image fails. */
"use strict";

document.addEventListener("error", function (e) {
  const img = e.target;
  if (!(img instanceof HTMLImageElement) || !img.classList.contains("tile-thumb")) return;
  const note = document.createElement("span");
  note.className = "muted small";
  note.textContent = "no tile";
  note.title = "The tile could not be fetched (is the gateway running?)";
  img.replaceWith(note);
}, true);

// Per-epoch line charts in SVG, shared by the training job page and the model comparison page.
window.MedCharts = (function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  // The charts' viewBox (600 x 240) and the margins around the plot.
  const W = 600, H = 240, L = 44, R = 10, T = 10, B = 26;
  const MAX_MARKED_EPOCHS = 60;  // wider charts draw lines without a marker per point

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // [epoch, value] of every history entry that recorded `key`, split into runs: an ensemble's
  // members are separate trainings, drawn as one line each rather than joined across members,
  // and an epoch without a value (a diverged loss, say) breaks the line rather than being bridged.
  function runs(history, key) {
    const out = [];
    let member, open = false;
    history.forEach((entry, i) => {
      const value = entry[key];
      if (typeof value !== "number" || !isFinite(value)) { open = false; return; }
      const point = [typeof entry.epoch === "number" ? entry.epoch : i + 1, value];
      if (open && entry.member === member) out[out.length - 1].push(point);
      else out.push([point]);
      open = true;
      member = entry.member;
    });
    return out;
  }

  // Clears `svg` and draws each of `series` ({runs, colour, attrs}): a polyline per run (with the
  // series' extra attributes) and, while the chart has few epochs, a marker per point, so a single
  // epoch still shows (a run of one point always has its marker). With no point at all it shows
  // `emptyText` and returns false.
  function draw(svg, series, emptyText) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const all = series.flatMap((s) => s.runs.flat());
    if (!all.length) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#5d6b7e" }, emptyText));
      return false;
    }
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    // From epoch 1 to the last one; a single epoch sits in the middle of the plot.
    const last = Math.max(...xs), single = xs.every((x) => x === last);
    const x0 = single ? last - 0.5 : Math.min(1, ...xs), x1 = single ? last + 0.5 : last;
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const sx = (x) => (L + ((x - x0) / (x1 - x0)) * (W - L - R)).toFixed(1);
    const sy = (y) => (T + (1 - (y - y0) / (y1 - y0)) * (H - T - B)).toFixed(1);
    svg.appendChild(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#c5ced9" }));
    svg.appendChild(el("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#c5ced9" }));
    svg.appendChild(el("text", { x: 4, y: T + 10, "font-size": 11, fill: "#5d6b7e" }, y1.toFixed(3)));
    svg.appendChild(el("text", { x: 4, y: H - B, "font-size": 11, fill: "#5d6b7e" }, y0.toFixed(3)));
    svg.appendChild(el("text", { x: W - R, y: H - 6, "font-size": 11, fill: "#5d6b7e", "text-anchor": "end" }, "epoch " + last));
    series.forEach((s) => {
      for (const run of s.runs) {
        svg.appendChild(el("polyline", { points: run.map((p) => sx(p[0]) + "," + sy(p[1])).join(" "),
          fill: "none", stroke: s.colour, "stroke-width": 2, "vector-effect": "non-scaling-stroke", ...s.attrs }));
        if (run.length > 1 && x1 - x0 > MAX_MARKED_EPOCHS) continue;  // markers would blur into a band
        run.forEach((p) => svg.appendChild(el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: s.colour })));
      }
    });
    return true;
  }

  return { el, runs, draw, margin: { left: L, top: T } };
})();

/* The taskmw dashboard's script: every few seconds it fetches the page's
   sections (HTML made by the server) and swaps them in, and draws the two
   charts from the samples of the pool's totals. No framework, no build step,
   nothing loaded from elsewhere. Without it the page refreshes itself. */
(() => {
  "use strict";
  const live = document.body.dataset.live;
  if (!live) return;
  const every = Number(document.body.dataset.interval) || 1000;
  const STATUSES = ["ok", "error", "lost", "timeout", "cancelled"];
  const WINDOW = 300, BUCKET = 10, KEEP = 600;
  const W = 640, H = 170, L = 44, R = 10, T = 10, B = 24;
  const points = new Map(); // t -> [t, totals, depth]: the union of what every HTTP worker sampled
  const updated = document.getElementById("updated");
  let latest = 0, failures = 0;

  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  const num = (x) => (Math.round(x * 10) / 10).toString();
  const sum = (totals) => STATUSES.reduce((a, s) => a + (totals[s] || 0), 0);
  const clock = (t) => new Date(t * 1000).toLocaleTimeString();

  function swap(sections) {
    for (const [key, html] of Object.entries(sections || {})) {
      const el = document.getElementById("s-" + key);
      if (el && el.innerHTML !== html) el.innerHTML = html;
    }
  }

  function merge(samples, now) {
    for (const p of samples || []) {
      points.set(p[0], p);
      if (p[0] > latest) latest = p[0];
    }
    for (const t of points.keys()) if (t < now - KEEP) points.delete(t);
  }

  function frame(max, now) {
    const ch = H - T - B;
    let out = "";
    for (const f of [0, 0.5, 1]) {
      const y = T + ch - f * ch;
      out += `<line class="grid" x1="${L}" x2="${W - R}" y1="${y}" y2="${y}"></line>`;
      out += `<text class="axis" x="${L - 6}" y="${y + 4}" text-anchor="end">${num(max * f)}</text>`;
    }
    const labels = [[0, "−5 min"], [0.5, "−2.5 min"], [1, "now " + clock(now)]];
    for (const [f, label] of labels) {
      const anchor = f === 0 ? "start" : f === 1 ? "end" : "middle";
      out += `<text class="axis" x="${L + f * (W - L - R)}" y="${H - 6}" text-anchor="${anchor}">${esc(label)}</text>`;
    }
    return out;
  }

  function drawFinishes(sorted, now) {
    const svg = document.getElementById("chart-finishes");
    if (!svg) return 0;
    const n = WINDOW / BUCKET, start = now - WINDOW, ch = H - T - B, cw = (W - L - R) / n;
    const buckets = Array.from({ length: n }, () => Object.fromEntries(STATUSES.map((s) => [s, 0])));
    let total = 0;
    for (let i = 1; i < sorted.length; i++) {
      const [, c0] = sorted[i - 1], [t1, c1] = sorted[i];
      if (t1 <= start) continue;
      const b = Math.min(n - 1, Math.floor((t1 - start) / BUCKET));
      for (const s of STATUSES) {
        const d = Math.max(0, (c1[s] || 0) - (c0[s] || 0));
        buckets[b][s] += d;
        total += d;
      }
    }
    const max = Math.max(1, ...buckets.map(sum));
    let out = frame(max, now);
    buckets.forEach((b, i) => {
      let y = T + ch;
      const tip = `${clock(start + i * BUCKET)}: ` + STATUSES.filter((s) => b[s]).map((s) => `${b[s]} ${s}`).join(", ");
      for (const s of STATUSES) {
        if (!b[s]) continue;
        const h = (b[s] / max) * ch;
        y -= h;
        out += `<rect class="bar st-${s}" data-status="${s}" data-count="${b[s]}" x="${L + i * cw + 1}" y="${y}" ` +
          `width="${Math.max(1, cw - 2)}" height="${h}"><title>${esc(tip)}</title></rect>`;
      }
    });
    svg.innerHTML = out;
    svg.dataset.total = String(total);
    return total;
  }

  function drawQueue(sorted, now) {
    const svg = document.getElementById("chart-queue");
    if (!svg) return;
    const start = now - WINDOW, ch = H - T - B;
    const shown = sorted.filter((p) => p[0] >= start);
    const max = Math.max(1, ...shown.map((p) => p[2]));
    const xy = shown.map((p) => `${L + ((p[0] - start) / WINDOW) * (W - L - R)},${T + ch - (p[2] / max) * ch}`);
    let out = frame(max, now);
    if (xy.length) out += `<polyline class="depth" points="${xy.join(" ")}"></polyline>`;
    if (shown.length) out += `<text class="now" x="${W - R}" y="${T + 12}" text-anchor="end">${shown[shown.length - 1][2]} queued</text>`;
    svg.innerHTML = out;
  }

  function draw(now) {
    const sorted = [...points.values()].sort((a, b) => a[0] - b[0]);
    const total = drawFinishes(sorted, now);
    drawQueue(sorted, now);
    const recent = sorted.filter((p) => p[0] >= now - 12);
    const rate = document.getElementById("rate");
    if (rate && recent.length >= 2) {
      const first = recent[0], last = recent[recent.length - 1];
      rate.textContent = num((sum(last[1]) - sum(first[1])) / Math.max(0.001, last[0] - first[0]));
    }
    const note = document.getElementById("chart-note");
    if (note && sorted.length) {
      const since = Math.max(sorted[0][0], now - WINDOW);
      note.textContent = `${total} finished in the last 5 minutes (sampled every 2 s since ${clock(since)})`;
    }
  }

  async function poll() {
    let done = false;
    try {
      const url = live + (live.includes("?") ? "&" : "?") + "since=" + latest;
      const r = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const data = await r.json();
      swap(data.sections);
      if (data.samples) {
        merge(data.samples, data.now);
        draw(data.now);
      }
      done = Boolean(data.done);
      updated.textContent = (done ? "finished · " : "live · ") + clock(data.now);
      updated.className = "updated live";
      failures = 0;
    } catch (e) {
      failures += 1;
      updated.textContent = `not updated (${e.message}): retrying`;
      updated.className = "updated stale";
    }
    if (!done) setTimeout(poll, Math.min(every * (1 + failures), 10000));
  }

  poll();
})();

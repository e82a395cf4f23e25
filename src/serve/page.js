"use strict";
const NS = "http://www.w3.org/2000/svg";
const $ = (s) => document.querySelector(s);
const fmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });
// Counts and ids arrive as strings (64-bit); money as exact decimal strings.
const count = (s) => fmt.format(Number(s));
// An exact decimal string with its thousands grouped, digits kept: "1234567.50" → "1,234,567.50".
function money(s) {
  const [whole, frac] = String(s).split(".");
  const sign = whole.startsWith("-") ? "-" : "";
  const digits = whole.slice(sign.length).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return sign + digits + (frac === undefined ? "" : "." + frac);
}

function el(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }
function size(svg) { const b = svg.viewBox.baseVal; return [b.width, b.height]; }
function esc(s) { const d = document.createElement("div"); d.textContent = String(s); return d.innerHTML; }

// A line of daily values; final days in colour, open days grey. Each point is a <circle>
// with data-day and data-value, so what is drawn can be read back.
function lineChart(svg, days, values, color) {
  clear(svg);
  const [w, h] = size(svg), left = 56, bottom = 22, top = 8;
  const max = Math.max(1, ...values);
  const x = (i) => left + (days.length < 2 ? 0 : i * (w - left - 8) / (days.length - 1));
  const y = (v) => h - bottom - v / max * (h - bottom - top);
  svg.appendChild(el("line", { x1: left, y1: h - bottom, x2: w - 4, y2: h - bottom, class: "axis" }));
  for (const f of [0, 0.5, 1]) {
    svg.appendChild(el("text", { x: left - 4, y: y(max * f) + 4, "text-anchor": "end" }, fmt.format(Math.round(max * f))));
  }
  if (days.length) {
    svg.appendChild(el("text", { x: left, y: h - 6 }, days[0].day));
    svg.appendChild(el("text", { x: w - 4, y: h - 6, "text-anchor": "end" }, days[days.length - 1].day));
  }
  let path = "";
  days.forEach((d, i) => { path += (i ? "L" : "M") + x(i).toFixed(1) + "," + y(values[i]).toFixed(1); });
  svg.appendChild(el("path", { d: path, fill: "none", stroke: color, "stroke-width": 1.5 }));
  days.forEach((d, i) => {
    const c = el("circle", { cx: x(i), cy: y(values[i]), r: 1.8, fill: d.is_final ? color : "var(--open)",
      "data-day": d.day, "data-value": d.value_text, "data-final": d.is_final });
    c.appendChild(el("title", {}, d.day + ": " + d.value_text + (d.is_final ? "" : " (open)")));
    svg.appendChild(c);
  });
}

// Horizontal bars: each <g class="bar"> has data-name and data-value (the exact value);
// the label drawn is shown(it). The right margin fits the longest label drawn.
function barChart(svg, items, valueOf, label, color, shown) {
  clear(svg);
  shown = shown || label;
  const [w, h] = size(svg);
  const longest = Math.max(0, ...items.map((it) => shown(it).length));
  const n = Math.max(items.length, 1), rowH = Math.min(24, (h - 4) / n), left = 190;
  const right = Math.min(w - left - 40, Math.ceil(longest * 7) + 10);
  const max = Math.max(1, ...items.map(valueOf));
  items.forEach((it, i) => {
    const g = el("g", { class: "bar", "data-name": it.name, "data-value": label(it) });
    const y = 2 + i * rowH, bw = valueOf(it) / max * (w - left - right);
    g.appendChild(el("text", { x: left - 6, y: y + rowH * 0.7, "text-anchor": "end" }, it.name.length > 30 ? it.name.slice(0, 29) + "…" : it.name));
    g.appendChild(el("rect", { x: left, y: y + 2, width: Math.max(bw, 1), height: rowH - 4, fill: color }));
    g.appendChild(el("text", { x: left + bw + 4, y: y + rowH * 0.7, class: "value" }, shown(it)));
    g.appendChild(el("title", {}, it.name + ": " + label(it)));
    svg.appendChild(g);
  });
  if (!items.length) svg.appendChild(el("text", { x: 10, y: 20 }, "no sales in this period"));
}

// Vertical bars: each <g class="bar"> has data-name and data-value.
function histogram(svg, items, color) {
  clear(svg);
  const [w, h] = size(svg), bottom = 34, top = 16;
  const max = Math.max(1, ...items.map((i) => i.value));
  const bw = (w - 8) / Math.max(items.length, 1);
  items.forEach((it, i) => {
    const g = el("g", { class: "bar", "data-name": it.name, "data-value": it.value });
    const bh = it.value / max * (h - bottom - top), x = 4 + i * bw;
    g.appendChild(el("rect", { x: x + 2, y: h - bottom - bh, width: bw - 4, height: Math.max(bh, 0.5), fill: color }));
    g.appendChild(el("text", { x: x + bw / 2, y: h - bottom - bh - 3, "text-anchor": "middle" }, fmt.format(it.value)));
    g.appendChild(el("text", { x: x + bw / 2, y: h - bottom + 14, "text-anchor": "middle" }, it.name));
    g.appendChild(el("title", {}, it.name + ": " + it.value + " customers"));
    svg.appendChild(g);
  });
}

// 5×5 grid of R (rows, 5 on top) by F (columns); each <g class="cell"> has data-r, data-f
// and data-value.
function grid(svg, cells) {
  clear(svg);
  const [w, h] = size(svg), left = 40, top = 10, cw = (w - left - 8) / 5, ch = (h - top - 30) / 5;
  const count = {};
  for (const c of cells) count[c.r + "," + c.f] = c.customers;
  const max = Math.max(1, ...cells.map((c) => c.customers));
  for (let r = 5; r >= 1; r--) {
    svg.appendChild(el("text", { x: left - 8, y: top + (5 - r) * ch + ch / 2 + 4, "text-anchor": "end" }, "R" + r));
    for (let f = 1; f <= 5; f++) {
      const n = count[r + "," + f] || 0;
      const g = el("g", { class: "cell", "data-r": r, "data-f": f, "data-value": n });
      const x = left + (f - 1) * cw, y = top + (5 - r) * ch;
      g.appendChild(el("rect", { x: x + 1, y: y + 1, width: cw - 2, height: ch - 2,
        fill: "rgba(47,111,223," + (0.08 + 0.92 * n / max).toFixed(3) + ")" }));
      g.appendChild(el("text", { x: x + cw / 2, y: y + ch / 2 + 4, "text-anchor": "middle",
        fill: n / max > 0.5 ? "#fff" : "var(--fg)" }, fmt.format(n)));
      g.appendChild(el("title", {}, "R" + r + " F" + f + ": " + n + " customers"));
      svg.appendChild(g);
    }
  }
  for (let f = 1; f <= 5; f++) svg.appendChild(el("text", { x: left + (f - 0.5) * cw, y: h - 10, "text-anchor": "middle" }, "F" + f));
}

// `show` formats a column's values by name (raw text otherwise).
function fillTable(table, columns, rows, numeric, show) {
  show = show || {};
  const text = (c, v) => (v === undefined || v === null) ? "" : (show[c] ? show[c](v) : v);
  let html = "<tr>" + columns.map((c) => `<th class="${numeric.includes(c) ? "num" : ""}">${esc(c)}</th>`).join("") + "</tr>";
  for (const r of rows) {
    html += "<tr>" + columns.map((c) => `<td class="${numeric.includes(c) ? "num" : ""}">${esc(text(c, r[c]))}</td>`).join("") + "</tr>";
  }
  table.innerHTML = html;
}

let version = null, lastOverview = null;

async function fetchJson(url, options) {
  const r = await fetch(url, options);
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function periodQuery() {
  const p = new URLSearchParams();
  if ($("#from").value) p.set("from", $("#from").value);
  if ($("#to").value) p.set("to", $("#to").value);
  return p.toString();
}

function render(o) {
  lastOverview = o;
  const s = o.snapshot;
  $("#snapshot-id").textContent = s.ids.join(",");
  document.body.dataset.version = s.version;
  $("#as-of").textContent = s.as_of || "–";
  $("#watermark").textContent = s.watermark || "–";
  const daily = o.daily;
  lineChart($("#chart-revenue"), daily.map((d) => ({ day: d.day, is_final: d.is_final, value_text: d.revenue })),
    daily.map((d) => Number(d.revenue)), "var(--accent)");
  lineChart($("#chart-orders"), daily.map((d) => ({ day: d.day, is_final: d.is_final, value_text: String(d.orders) })),
    daily.map((d) => Number(d.orders)), "var(--accent2)");
  const byRevenue = (it) => Number(it.revenue), byUnits = (it) => Number(it.units);
  const revenue = (it) => it.revenue, units = (it) => String(it.units);
  const revenueShown = (it) => money(it.revenue), unitsShown = (it) => count(it.units);
  barChart(document.querySelector('[data-chart="categories-revenue"]'), o.categories_by_revenue, byRevenue, revenue, "var(--accent)", revenueShown);
  barChart(document.querySelector('[data-chart="categories-units"]'), o.categories_by_units, byUnits, units, "var(--accent2)", unitsShown);
  barChart(document.querySelector('[data-chart="brands-revenue"]'), o.brands_by_revenue, byRevenue, revenue, "var(--accent)", revenueShown);
  barChart(document.querySelector('[data-chart="brands-units"]'), o.brands_by_units, byUnits, units, "var(--accent2)", unitsShown);
  const p = o.period;
  $("#period-note").textContent = (p.from || p.to) ? `${p.from || "start"} to ${p.to || "end"}` : "all days";
  histogram(document.querySelector('[data-chart="orders-per-customer"]'),
    o.orders_per_customer.map((b) => ({ name: Number(b.orders) >= 10 ? "10+" : String(b.orders), value: Number(b.customers) })), "var(--accent)");
  histogram(document.querySelector('[data-chart="spend-per-customer"]'),
    o.spend_per_customer.map((b) => ({ name: b.bucket, value: Number(b.customers) })), "var(--accent2)");
  barChart(document.querySelector('[data-chart="segments"]'), o.segments.map((sg) => ({ name: sg.segment, customers: sg.customers })),
    (it) => Number(it.customers), (it) => String(it.customers), "var(--accent)", (it) => count(it.customers));
  fillTable($("#segments-table"), ["segment", "customers", "revenue"], o.segments, ["customers", "revenue"],
    { customers: count, revenue: money });
  grid(document.querySelector('[data-chart="rf-grid"]'), o.grid.map((c) => ({ r: Number(c.r), f: Number(c.f), customers: Number(c.customers) })));
  const rejected = s.rejected.reduce((a, r) => a + r.lines, 0);
  $("#quality-note").textContent = `${fmt.format(s.records)} records: ${fmt.format(s.accepted)} accepted, ` +
    `${fmt.format(rejected)} rejected` + (s.duplicates ? `, ${fmt.format(s.duplicates)} duplicates skipped` : "") + ".";
  fillTable($("#rejected"), ["reason", "lines"], s.rejected, ["lines"]);
}

// A topic read through a merged view that is behind its partitions' newest snapshots:
// how far, and which snapshots it merges (the numbers are exact for those).
function showCut(cut) {
  const el = $("#cut");
  el.hidden = !cut || cut.newest;
  if (el.hidden) return;
  el.textContent = `view ${(cut.behind_ms / 1000).toFixed(1)} s behind`;
  el.title = cut.text;
}

async function refresh(force) {
  try {
    const s = await fetchJson("/api/snapshot");
    showCut(s.cut);
    if (force || s.version !== version) {
      const o = await fetchJson("/api/overview?" + periodQuery());
      version = o.snapshot.version;
      render(o);
    }
    $("#status").textContent = "live";
    $("#status").className = "meta";
  } catch (e) {
    $("#status").textContent = e.message;
    $("#status").className = "meta error";
  }
}

for (const b of document.querySelectorAll("[data-days]")) {
  b.addEventListener("click", () => {
    const days = Number(b.dataset.days), last = lastOverview && lastOverview.daily.at(-1);
    if (!days || !last) { $("#from").value = ""; $("#to").value = ""; }
    else {
      const to = new Date(last.day + "T00:00:00Z"), from = new Date(to.getTime() - (days - 1) * 86400000);
      $("#from").value = from.toISOString().slice(0, 10); $("#to").value = last.day;
    }
    refresh(true);
  });
}
$("#from").addEventListener("change", () => refresh(true));
$("#to").addEventListener("change", () => refresh(true));

$("#lookup").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const id = $("#customer-id").value.trim();
  if (!id) return;
  try {
    const c = await fetchJson("/api/customer/" + encodeURIComponent(id));
    $("#customer").innerHTML = `<table>` +
      [["segment", c.segment], ["R, F, M scores", `${c.r_score}, ${c.f_score}, ${c.m_score} (cell ${c.rfm_cell})`],
       ["recency", c.recency_days + " days"], ["frequency", c.frequency + " orders"], ["monetary", money(c.monetary)],
       ["items", count(c.items)], ["first purchase", c.first_purchase], ["last purchase", c.last_purchase]]
        .map(([k, v]) => `<tr><th>${esc(k)}</th><td data-field="${esc(k)}">${esc(v)}</td></tr>`).join("") + `</table>`;
  } catch (e) {
    $("#customer").innerHTML = `<p class="error">${esc(e.message)}</p>`;
    $("#customer-history").innerHTML = "";
    return;
  }
  customerHistory(id);
});

// A customer's segment over time, from the Delta table rfm at versions spread over its
// history. Each row has data-version and data-segment ("" when not a customer yet).
async function customerHistory(id) {
  const box = $("#customer-history");
  box.innerHTML = `<p class="note">segment over time: reading the tables' history…</p>`;
  try {
    const h = await fetchJson("/api/customer/" + encodeURIComponent(id) + "/history");
    if (!h.tables) {
      box.innerHTML = `<p class="note">Segment over time needs the Delta tables (<code>--tables</code>).</p>`;
      return;
    }
    const rows = h.points.map((p) => {
      const seg = p.segment === null ? "" : p.segment;
      const cells = [String(p.event_time || "").slice(0, 10), seg || "not a customer yet",
        seg ? `${p.r_score}${p.f_score}${p.m_score}` : "", seg ? p.frequency : "", seg ? money(p.monetary) : ""];
      return `<tr data-version="${esc(p.version)}" data-segment="${esc(seg)}">` +
        cells.map((c, i) => `<td class="${i > 1 ? "num" : ""}">${esc(c)}</td>`).join("") + "</tr>";
    });
    box.innerHTML = `<h3>Segment over time</h3><table><tr><th>event time</th><th>segment</th>` +
      `<th class="num">RFM</th><th class="num">orders</th><th class="num">monetary</th></tr>${rows.join("")}</table>`;
  } catch (e) {
    box.innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

$("#sql-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const r = await fetchJson("/api/sql", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ sql: $("#sql").value }) });
    fillTable($("#sql-result"), r.columns, r.rows, []);
    $("#sql-note").textContent = r.rows.length + " rows" + (r.truncated ? " (truncated)" : "");
    $("#sql-note").className = "note";
  } catch (e) {
    $("#sql-result").innerHTML = "";
    $("#sql-note").textContent = e.message;
    $("#sql-note").className = "note error";
  }
});

// The segment-movement matrix: `segment_movement` through the SQL box with `compare_to`.
// Each cell has data-from, data-to and data-customers (exact), and its money in a title.
async function movement() {
  const since = $("#since").value.trim() || "30d";
  const sql = "SELECT from_segment, to_segment, customers, monetary_now, spent_between FROM segment_movement";
  try {
    const r = await fetchJson("/api/sql", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ sql, compare_to: since, limit: 10000 }) });
    const from = [...new Set(r.rows.map((x) => x.from_segment))].sort();
    const to = [...new Set(r.rows.map((x) => x.to_segment))].sort();
    const cell = new Map(r.rows.map((x) => [x.from_segment + "\u0000" + x.to_segment, x]));
    let html = "<tr><th>then \\ now</th>" + to.map((t) => `<th class="num">${esc(t)}</th>`).join("") + "</tr>";
    for (const f of from) {
      html += `<tr><th>${esc(f)}</th>` + to.map((t) => {
        const x = cell.get(f + "\u0000" + t);
        if (!x) return `<td class="num"></td>`;
        const title = `${x.customers} customers, ${money(x.monetary_now)} now, ${money(x.spent_between)} spent since`;
        return `<td class="num${f === t ? " same" : ""}" data-from="${esc(f)}" data-to="${esc(t)}" ` +
          `data-customers="${esc(x.customers)}" title="${esc(title)}">${esc(count(x.customers))}</td>`;
      }).join("") + "</tr>";
    }
    $("#movement").innerHTML = html;
    $("#movement-note").textContent = "against " + r.snapshot;
    $("#movement-note").className = "note";
  } catch (e) {
    $("#movement").innerHTML = "";
    $("#movement-note").textContent = e.message;
    $("#movement-note").className = "note error";
  }
}
$("#movement-form").addEventListener("submit", (ev) => { ev.preventDefault(); movement(); });

refresh(true);
setInterval(() => refresh(false), 2000);

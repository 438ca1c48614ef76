// Live dashboard: the /dashboard/state snapshot paints the page at once; then one EventSource on
// /dashboard/events, each message a full state snapshot.
"use strict";
const COLORS = ["#2e90fa", "#12b76a", "#f79009", "#7a5af8", "#f04438", "#0ba5ec", "#ee46bc", "#667085"];
const $ = (id) => document.getElementById(id);
const fmt = (x, digits) => (x === null || x === undefined ? "-" : Number(x).toFixed(digits));

function deviceCard(dev) {
  let card = $("device-" + dev.id);
  if (card) return card;
  card = document.createElement("div");
  card.className = "node device";
  card.id = "device-" + dev.id;
  card.dataset.device = dev.id;
  card.innerHTML = `<h3>Device ${dev.id}</h3>
    <div class="row"><span>SNR DL / UL</span><b class="snr">-</b></div><div class="bar snr"><div></div></div>
    <div class="row"><span>distance</span><b class="dist">-</b></div>
    <div class="row"><span>bandwidth (step)</span><b class="band">-</b></div>
    <div class="row"><span>latency (step)</span><b class="lat">-</b></div><div class="bar lat"><div></div></div>
    <div class="row"><span>tokens (total)</span><b class="tokens">0</b></div><div class="bar load"><div></div></div>
    <div class="row"><span>compute (total)</span><b class="compute">-</b></div>`;
  $("devices").appendChild(card);
  return card;
}

function drawDevices(state) {
  const maxTokens = Math.max(1, ...state.devices.map((d) => d.tokens));
  const maxLat = Math.max(1e-12, ...state.devices.map((d) => d.latency_s));
  for (const dev of state.devices) {
    const card = deviceCard(dev);
    const q = (sel) => card.querySelector(sel);
    q(".snr").textContent = state.radio ? `${fmt(dev.snr_dl_db, 1)} / ${fmt(dev.snr_ul_db, 1)} dB` : "no radio";
    q(".bar.snr > div").style.width = state.radio ? `${Math.min(100, Math.max(0, dev.snr_dl_db) * 2)}%` : "0";
    q(".dist").textContent = state.radio ? `${fmt(dev.distance_m, 0)} m` : "-";
    q(".band").textContent = dev.bandwidth_hz == null ? "-" : `${fmt(dev.bandwidth_hz / 1e6, 2)} MHz`;
    q(".lat").textContent = `${fmt(dev.latency_s * 1e3, 3)} ms`;
    q(".bar.lat > div").style.width = `${(100 * dev.latency_s) / maxLat}%`;
    q(".tokens").textContent = String(dev.tokens);
    q(".bar.load > div").style.width = `${(100 * dev.tokens) / maxTokens}%`;
    q(".compute").textContent = `${fmt(dev.compute_s * 1e3, 1)} ms`;
  }
}

function drawSplit(state) {
  const split = $("split");
  const shares = state.devices.map((d) => d.bandwidth_hz || 0);
  const total = shares.reduce((a, b) => a + b, 0);
  split.innerHTML = "";
  if (!total) { split.textContent = state.radio ? "no layer step yet" : "radio model off"; return; }
  state.devices.forEach((dev, i) => {
    const part = document.createElement("div");
    part.style.width = `${(100 * shares[i]) / total}%`;
    part.style.background = COLORS[i % COLORS.length];
    part.textContent = `D${dev.id}`;
    part.title = `device ${dev.id}: ${fmt(shares[i] / 1e6, 2)} MHz`;
    split.appendChild(part);
  });
}

function drawHeatmap(state) {
  const layers = Object.keys(state.usage);
  const table = document.createElement("table");
  table.className = "heat";
  let head = "<tr><th>layer</th>";
  for (let e = 0; e < state.num_experts; e++) head += `<th>E${e}</th>`;
  table.innerHTML = head + "</tr>";
  for (const layer of layers) {
    const counts = state.usage[layer];
    const dropped = (state.dropped || {})[layer] || counts.map(() => 0);
    const top = Math.max(1, ...counts);
    const row = document.createElement("tr");
    row.innerHTML = `<th>${layer}</th>` + counts.map((c, e) => {
      const a = (0.08 + 0.92 * (c / top)).toFixed(2);
      const drop = dropped[e] ? `<span class="drop">-${dropped[e]}</span>` : "";
      return `<td class="cell" title="layer ${layer}, expert ${e}: ${c} pairs kept, ${dropped[e]} dropped" ` +
        `style="background: rgba(46,144,250,${a})">${c}${drop}</td>`;
    }).join("");
    table.appendChild(row);
  }
  $("heatmap").replaceChildren(layers.length ? table : document.createTextNode("no MoE step yet"));
}

function sparkline(id, series, unit, digits) {
  // series: [{values, color}], values may hold nulls (a step without that figure)
  const box = $(id);
  const svg = box.querySelector("svg");
  const width = Number(svg.getAttribute("width")), height = Number(svg.getAttribute("height"));
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  const top = Math.max(1e-12, ...all);
  svg.innerHTML = series.map((s) => {
    const n = s.values.length;
    const points = s.values.map((v, i) => (v === null || v === undefined ? null :
      `${(n > 1 ? (i * (width - 2)) / (n - 1) : 0) + 1},${height - 1 - (v / top) * (height - 2)}`)).filter(Boolean);
    return `<polyline class="line" stroke="${s.color}" points="${points.join(" ")}"></polyline>`;
  }).join("");
  const last = series.map((s) => s.values[s.values.length - 1]).map((v) => fmt(v, digits));
  box.querySelector(".last").textContent = all.length ? `last: ${last.join(", ")} ${unit}; max ${fmt(top, digits)}` : "no step yet";
}

function drawHistory(state) {
  const h = state.history || [];
  sparkline("spark-latency", [
    { values: h.map((s) => (s.modeled_s === null ? null : s.modeled_s * 1e3)), color: "#f79009" },
    { values: h.map((s) => s.wall_s * 1e3), color: "#667085" },
  ], "ms", 2);
  sparkline("spark-air", [{ values: h.map((s) => s.bytes_on_air / 1e3), color: "#2e90fa" }], "kB", 1);
  sparkline("spark-experts", [{ values: h.map((s) => s.experts_per_token), color: "#12b76a" }], "", 2);
}

function draw(state) {
  $("model").textContent = state.model;
  $("policy").textContent = state.policy || "top-k (no radio)";
  $("requests").textContent = state.requests;
  $("steps").textContent = state.steps;
  $("queue").textContent = state.queue;
  const last = state.last_step;
  $("last-step").textContent = last.phase ? `${last.phase}, ${last.tokens} tokens, ${fmt(last.wall_s * 1e3, 1)} ms` : "-";
  $("bs-band").textContent = state.radio ? `${fmt(state.bandwidth_hz / 1e6, 1)} MHz` : "radio off";
  $("bs-devices").textContent = state.devices.length;
  drawDevices(state);
  drawSplit(state);
  drawHeatmap(state);
  drawHistory(state);
  const dropped = Object.values(state.dropped || {}).flat().reduce((a, b) => a + b, 0);
  $("dropped").textContent = dropped;
}

function connect() {
  const source = new EventSource("/dashboard/events");
  source.onopen = () => { $("conn").textContent = "live"; $("conn").className = "live"; };
  source.onmessage = (event) => draw(JSON.parse(event.data));
  source.onerror = () => { $("conn").textContent = "reconnecting"; $("conn").className = "down"; };
}
// First paint from the snapshot, so nothing shows "-" until the first live update.
fetch("/dashboard/state").then((r) => r.json()).then(draw).catch(() => {}).finally(connect);

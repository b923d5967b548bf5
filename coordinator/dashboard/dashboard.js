// FleetEdge live dashboard: everything it needs comes from the coordinator (no CDN, no map tiles).
// The API key stays in this tab (sessionStorage) and goes in the Authorization header of every call.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = {
  key: null, vehicles: new Map(), snapshot: null, selected: null, picking: false,
  view: null, cells: [], orders: [], alerts: [],
};

// -- the key --------------------------------------------------------------------------------------
function takeKeyFromUrl() {
  const m = location.hash.match(/key=([^&]+)/);
  if (m) {
    sessionStorage.setItem("fleetedge-key", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);  // the key leaves the address bar
  }
  return sessionStorage.getItem("fleetedge-key");
}

function askForKey(message) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("fleetedge-key", $("key").value.trim());
  start();
});

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    askForKey("That key is unknown or revoked.");
    throw new Error("unauthorized");
  }
  return response;
}

// -- the map: an equirectangular projection around the fleet, in screen pixels ----------------------
function fitView(points) {
  const svg = $("map");
  const w = svg.clientWidth || 800, h = svg.clientHeight || 600;
  if (!points.length) return null;
  let [minLat, maxLat, minLon, maxLon] = [90, -90, 180, -180];
  for (const [lat, lon] of points) {
    minLat = Math.min(minLat, lat); maxLat = Math.max(maxLat, lat);
    minLon = Math.min(minLon, lon); maxLon = Math.max(maxLon, lon);
  }
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const spanX = Math.max((maxLon - minLon) * k, 0.005), spanY = Math.max(maxLat - minLat, 0.005);
  const scale = 0.85 * Math.min(w / spanX, h / spanY);
  return { k, scale, cx: (minLon + maxLon) / 2, cy: (minLat + maxLat) / 2, w, h };
}

function project(lat, lon) {
  const v = state.view;
  return [v.w / 2 + (lon - v.cx) * v.k * v.scale, v.h / 2 - (lat - v.cy) * v.scale];
}

function unproject(x, y) {
  const v = state.view;
  return [v.cy - (y - v.h / 2) / v.scale, v.cx + (x - v.w / 2) / (v.k * v.scale)];
}

function el(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function drawVehicles() {
  const layer = $("vehicles");
  const seen = new Set();
  for (const v of state.snapshot.vehicles) {
    if (v.lat === null || v.lon === null) continue;
    seen.add(v.id);
    let dot = state.vehicles.get(v.id);
    if (!dot) {
      dot = el("circle", { r: 6, "data-id": v.id });
      dot.appendChild(el("title", {}));
      dot.addEventListener("click", (e) => { e.stopPropagation(); select(v.id); });
      layer.appendChild(dot);
      state.vehicles.set(v.id, dot);
    }
    const [x, y] = project(v.lat, v.lon);
    dot.setAttribute("cx", x.toFixed(1));
    dot.setAttribute("cy", y.toFixed(1));
    dot.setAttribute("class", `vehicle ${v.kind || "unknown"}${v.online ? "" : " offline"}` +
                              `${state.selected === v.id ? " selected" : ""}`);
    dot.dataset.lat = v.lat;
    dot.dataset.lon = v.lon;
    dot.firstChild.textContent = `${v.id} (${v.kind || "?"}) ${v.online ? "online" : "offline"}` +
                                 (v.battery !== null ? `, battery ${v.battery.toFixed(0)} %` : "");
  }
  for (const [id, dot] of state.vehicles) {
    if (!seen.has(id)) { dot.remove(); state.vehicles.delete(id); }
  }
}

function drawOrders() {
  const layer = $("orders");
  layer.replaceChildren();
  for (const o of state.snapshot.orders) {
    const [x1, y1] = project(...o.pickup), [x2, y2] = project(...o.dropoff);
    layer.appendChild(el("line", { x1, y1, x2, y2, class: `order ${o.state}`, "data-id": o.id }));
  }
}

function cellColour(layer, value, max) {
  if (layer === "imbalance") {
    const t = Math.min(1, Math.abs(value) / Math.max(1, max));
    return value < 0 ? `rgba(255,107,107,${0.15 + 0.6 * t})` : `rgba(79,179,255,${0.15 + 0.6 * t})`;
  }
  const t = Math.min(1, value / Math.max(1e-9, max));
  return `rgba(255,209,102,${0.1 + 0.65 * t})`;
}

function drawCells() {
  const layer = $("cells");
  layer.replaceChildren();
  const name = $("layer").value;
  const max = Math.max(0, ...state.cells.map((f) => Math.abs(f.properties.value || 0)));
  for (const f of state.cells) {
    const points = f.geometry.coordinates[0].map(([lon, lat]) => project(lat, lon).map((n) => n.toFixed(1)).join(","));
    const polygon = el("polygon", { points: points.join(" "), class: "cell", "data-cell": f.id,
                                    fill: cellColour(name, f.properties.value || 0, max) });
    polygon.appendChild(el("title", {}));
    polygon.firstChild.textContent = `${f.id}: ${name} ${f.properties.value}, supply ${f.properties.supply}, ` +
                                     `demand ${f.properties.demand}`;
    layer.appendChild(polygon);
  }
}

function redraw() {
  if (!state.view || !state.snapshot) return;
  drawCells();
  drawOrders();
  drawVehicles();
}

async function loadCells() {
  const name = $("layer").value;
  if (!name) { state.cells = []; redraw(); return; }
  try {
    const response = await api(`/v1/heatmap?layer=${name}`);
    if (response.ok) state.cells = (await response.json()).features;
  } catch (e) { /* the next refresh tries again */ }
  redraw();
}
$("layer").addEventListener("change", loadCells);

// Pan and zoom.
(function () {
  const svg = $("map");
  let drag = null;
  svg.addEventListener("mousedown", (e) => { drag = [e.clientX, e.clientY]; });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", (e) => {
    if (!drag || !state.view) return;
    const v = state.view;
    v.cx -= (e.clientX - drag[0]) / (v.k * v.scale);
    v.cy += (e.clientY - drag[1]) / v.scale;
    drag = [e.clientX, e.clientY];
    redraw();
  });
  svg.addEventListener("wheel", (e) => {
    if (!state.view) return;
    e.preventDefault();
    state.view.scale *= e.deltaY < 0 ? 1.2 : 1 / 1.2;
    redraw();
  }, { passive: false });
  svg.addEventListener("click", (e) => {
    if (!state.picking || !state.view) return;
    const box = svg.getBoundingClientRect();
    const [lat, lon] = unproject(e.clientX - box.left, e.clientY - box.top);
    state.picking = false;
    svg.classList.remove("picking");
    command({ action: "goto", lat, lon, alt_m: 30 });
  });
})();

// -- a vehicle's panel and commands -----------------------------------------------------------------
async function select(id) {
  state.selected = id;
  $("detail").hidden = false;
  $("detail-title").textContent = id;
  $("command-result").textContent = "";
  redraw();
  const since = Math.floor(Date.now() / 1000) - 60;
  const [vehicle, orders, telemetry] = await Promise.all([
    api(`/v1/vehicles/${encodeURIComponent(id)}`).then((r) => r.json()),
    api(`/v1/orders?vehicle_id=${encodeURIComponent(id)}&state=assigned&state=accepted&state=picked_up`)
      .then((r) => r.json()),
    api(`/v1/vehicles/${encodeURIComponent(id)}/telemetry?since=${since}&limit=200`).then((r) => r.json()),
  ]);
  const records = (telemetry.records || []).slice(-40).reverse();
  $("detail-telemetry").replaceChildren(...records.map((rec) => {
    const li = document.createElement("li");
    const values = Object.entries(rec.data || {}).map(([k, v]) =>
      `${k}=${typeof v === "number" ? +v.toFixed(5) : JSON.stringify(v)}`).join(" ");
    li.textContent = `${new Date(rec.ts * 1000).toLocaleTimeString()} ${rec.kind} ${values}`;
    li.dataset.kind = rec.kind;
    return li;
  }));
  const latest = vehicle.latest || {};
  const fields = {
    kind: vehicle.kind, online: vehicle.online ? "yes" : "no",
    position: vehicle.lat !== null ? `${vehicle.lat.toFixed(5)}, ${vehicle.lon.toFixed(5)}` : "no fix",
    battery: (latest.battery || latest.sys_status || {}).remaining_pct ?? "—",
    mode: (latest.status || {}).mode ?? "—",
    "last seen": vehicle.last_seen ? new Date(vehicle.last_seen * 1000).toLocaleTimeString() : "—",
    agent: vehicle.agent_version || "—",
  };
  $("detail-fields").replaceChildren(...Object.entries(fields).flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = v;
    return [dt, dd];
  }));
  const job = (orders.orders || [])[0];
  $("detail-job").textContent = job ? `${job.order_id}: ${job.state}` : "none";
  const models = (latest.models || {}).running;
  $("detail-models").textContent = models ? Object.entries(models).map(([n, v]) => `${n} ${v}`).join(", ") : "—";
}

async function command(body) {
  const out = $("command-result");
  out.className = "";
  out.textContent = "sending…";
  const response = await api(`/v1/vehicles/${encodeURIComponent(state.selected)}/commands`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (response.ok) {
    out.className = "ok";
    out.textContent = `${body.action} sent (command ${answer.command_id})`;
  } else {
    out.className = "error";
    out.textContent = `refused (${response.status}): ${answer.detail || response.statusText}`;
  }
}

$("send-home").addEventListener("click", () => command({ action: "return_to_launch" }));
$("send-goto").addEventListener("click", () => {
  state.picking = true;
  $("map").classList.add("picking");
  $("command-result").textContent = "click the map where it should go";
});

// -- the live stream --------------------------------------------------------------------------------
function showKpis(k) {
  const parts = [["vehicles online", `${k.online}/${k.vehicles}`], ["open orders", k.orders_open]];
  if (k.dispatch) parts.push(["delivered", k.dispatch.delivered], ["assigned", k.dispatch.assigned]);
  $("kpis").replaceChildren(...parts.map(([label, value]) => {
    const span = document.createElement("span");
    span.className = "kpi";
    span.dataset.kpi = label;
    span.innerHTML = `${label} <b></b>`;
    span.querySelector("b").textContent = value;
    return span;
  }));
}

function addAlert(a) {
  const li = document.createElement("li");
  li.dataset.kind = a.kind;
  li.dataset.vehicle = a.vehicle_id;
  const time = new Date(a.ts * 1000).toLocaleTimeString();
  li.innerHTML = `<span class="kind"></span> <span class="who"></span> <small></small>`;
  li.querySelector(".kind").textContent = a.kind;
  li.querySelector(".who").textContent = a.vehicle_id;
  li.querySelector("small").textContent = `${time} ${JSON.stringify(a.data)}`;
  $("alerts").prepend(li);
  while ($("alerts").children.length > 200) $("alerts").lastChild.remove();
}

function onEvent(kind, data) {
  if (kind === "alert") { addAlert(data); return; }
  state.snapshot = data;
  if (!state.view) {
    const points = data.vehicles.filter((v) => v.lat !== null).map((v) => [v.lat, v.lon]);
    state.view = fitView(points);
  }
  showKpis(data.kpis);
  redraw();
}

// A snapshot comes every second: a stream silent for this long is stuck (a proxy or a half-open
// connection) and is opened again, rather than showing a frozen fleet as "live".
const STALL_MS = 10000;

async function stream() {
  let backoff = 1000;
  for (;;) {
    const stalled = new AbortController();
    let heard = Date.now();
    const watchdog = setInterval(() => { if (Date.now() - heard > STALL_MS) stalled.abort(); }, 1000);
    try {
      const response = await api("/v1/stream?interval_s=1", { signal: stalled.signal });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      $("link").textContent = "live";
      $("link").className = "link-up";
      backoff = 1000;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        heard = Date.now();
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const kind = (block.match(/^event: (.*)$/m) || [])[1] || "message";
          const data = (block.match(/^data: (.*)$/m) || [])[1];
          if (data) onEvent(kind, JSON.parse(data));
        }
      }
    } catch (e) {
      if (e.message === "unauthorized") return;
    } finally {
      clearInterval(watchdog);
    }
    $("link").textContent = "reconnecting…";
    $("link").className = "link-down";
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(backoff * 2, 15000);
  }
}

let cellTimer = null;
function start() {
  state.key = takeKeyFromUrl();
  if (!state.key) { askForKey(); return; }
  $("login").hidden = true;
  $("main").hidden = false;
  window.addEventListener("resize", () => { state.view = null; });
  loadCells();
  clearInterval(cellTimer);
  cellTimer = setInterval(loadCells, 15000);
  stream();
}

start();

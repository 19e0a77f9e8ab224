// The reference kitchen screen (docs/realtime.md#the-reference-kitchen-screen): pairs with a
// code, shows the restaurant's open tickets live over the WebSocket, bumps a ticket through the
// API, resumes from its last event id after a network drop, and says why when it is refused.
// Plain browser JavaScript, no build step, nothing from a CDN.
"use strict";

const KEY = "posmesh.kitchen.";
const SHOWN = ["SENT_TO_KITCHEN", "PREPARING", "READY"];
const NEXT = { SENT_TO_KITCHEN: "PREPARING", PREPARING: "READY" };
const BUMP_LABEL = { SENT_TO_KITCHEN: "Start", PREPARING: "Ready" };
// Sign-ins the screen cannot recover from: pair again.
const UNPAIRED = ["SESSION_REVOKED", "REFRESH_REUSED", "REFRESH_EXPIRED", "TOKEN_INVALID"];

const screen = {
  access: "", refresh: localStorage.getItem(KEY + "refresh") || "",
  restaurant: localStorage.getItem(KEY + "restaurant") || "",
  name: localStorage.getItem(KEY + "name") || "",
  lastEventId: localStorage.getItem(KEY + "lastEventId") || "",
  tickets: new Map(), socket: null, retries: 0, refreshTimer: 0, stopped: false, refusal: "",
  connections: 0, resumedFrom: "",
};

const $ = (id) => document.getElementById(id);

function reasonOf(body) {
  for (const detail of (body && body.details) || []) {
    if (detail && detail.reason) return detail.reason;
  }
  return "";
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

function connection(state, text) {
  $("connection").dataset.state = state;
  $("connection").textContent = text || state;
}

function remember(credential) {
  screen.access = credential.access_token;
  screen.refresh = credential.refresh_token;
  localStorage.setItem(KEY + "refresh", screen.refresh);
  clearTimeout(screen.refreshTimer);
  const seconds = Math.max(5, (credential.expires_in || 60) - 30);
  screen.refreshTimer = setTimeout(() => refresh().catch(() => {}), seconds * 1000);
}

async function call(method, path, body) {
  const response = await fetch(path, {
    method, headers: Object.assign({ "content-type": "application/json" },
      screen.access ? { authorization: "Bearer " + screen.access } : {}),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let parsed = {};
  try { parsed = await response.json(); } catch (e) { parsed = {}; }
  return { ok: response.ok, status: response.status, body: parsed, reason: reasonOf(parsed) };
}

async function api(method, path, body) {
  let reply = await call(method, path, body);
  if (reply.status === 401 && reply.reason === "TOKEN_EXPIRED" && await refresh()) {
    reply = await call(method, path, body);
  }
  return reply;
}

async function refresh() {
  if (!screen.refresh) return false;
  const reply = await call("POST", "/api/v1/auth/refresh", { refresh_token: screen.refresh });
  if (reply.ok) {
    remember(reply.body);
    return true;
  }
  if (UNPAIRED.includes(reply.reason)) unpaired(`This screen is no longer paired (${reply.reason}).`);
  else notice(`Could not refresh the screen's sign-in: ${reply.reason || reply.status}`);
  return false;
}

function unpaired(why) {
  screen.stopped = true;
  if (screen.socket) screen.socket.close();
  for (const name of ["refresh", "restaurant", "name", "lastEventId"]) localStorage.removeItem(KEY + name);
  Object.assign(screen, { access: "", refresh: "", restaurant: "", lastEventId: "" });
  screen.tickets.clear();
  render();
  connection("offline", "not paired");
  notice(why + " Ask a manager for a new pairing code.");
  $("pairing").hidden = false;
}

async function pair(code) {
  const reply = await call("POST", "/api/v1/devices:pair", { code });
  if (!reply.ok) {
    notice(`Pairing refused: ${reply.reason || reply.status}. ${reply.body.message || ""}`);
    return;
  }
  const device = reply.body.device;
  if (device.device_type !== "KITCHEN_SCREEN") {
    notice(`That code pairs a ${device.device_type}, not a kitchen screen.`);
    return;
  }
  screen.restaurant = device.restaurant_id;
  screen.name = device.name;
  localStorage.setItem(KEY + "restaurant", screen.restaurant);
  localStorage.setItem(KEY + "name", screen.name);
  remember(reply.body);
  $("pairing").hidden = true;
  notice("");
  screen.stopped = false;
  await start();
}

function apply(order) {
  if (SHOWN.includes(order.status)) screen.tickets.set(order.id, order);
  else screen.tickets.delete(order.id);
}

async function loadTickets() {
  const reply = await api("GET", "/api/v1/orders/active?page_size=500");
  if (!reply.ok) {
    notice(`Could not load the tickets: ${reply.reason || reply.status}`);
    return;
  }
  screen.tickets.clear();
  for (const order of reply.body.orders || []) apply(order);
  render();
}

function render() {
  $("title").textContent = screen.name ? `Kitchen: ${screen.name}` : "Kitchen screen";
  const board = $("tickets");
  board.replaceChildren();
  const orders = [...screen.tickets.values()].sort((a, b) => a.ticket_number - b.ticket_number);
  for (const order of orders) {
    const card = document.createElement("article");
    card.className = "ticket";
    card.dataset.status = order.status;
    card.dataset.orderId = order.id;
    const heading = document.createElement("h2");
    heading.textContent = `#${order.ticket_number}`;
    const where = document.createElement("span");
    where.textContent = order.table_number ? `Table ${order.table_number}` : order.order_type;
    heading.append(where);
    const lines = document.createElement("ul");
    for (const line of order.lines || []) {
      const item = document.createElement("li");
      item.textContent = `${line.quantity} × ${line.name}` + (line.notes ? ` (${line.notes})` : "");
      lines.append(item);
    }
    const status = document.createElement("p");
    status.className = "status";
    status.textContent = order.status;
    card.append(heading, lines, status);
    if (order.notes) {
      const notes = document.createElement("p");
      notes.className = "notes";
      notes.textContent = order.notes;
      card.append(notes);
    }
    if (NEXT[order.status]) {
      const bump = document.createElement("button");
      bump.textContent = BUMP_LABEL[order.status];
      bump.addEventListener("click", () => bumpTicket(order.id));
      card.append(bump);
    }
    board.append(card);
  }
}

async function bumpTicket(orderId) {
  const order = screen.tickets.get(orderId);
  if (!order || !NEXT[order.status]) return;
  const reply = await api("POST", `/api/v1/orders/${orderId}/status`,
    { status: NEXT[order.status], version: order.version });
  if (reply.ok) {
    apply(reply.body);
    render();
  } else if (reply.reason === "VERSION_CONFLICT") {
    await loadTickets();  // someone moved it meanwhile
  } else {
    notice(`Bump refused: ${reply.reason || reply.status}. ${reply.body.message || ""}`);
  }
}

function send(type, fields) {
  if (screen.socket && screen.socket.readyState === WebSocket.OPEN) {
    screen.socket.send(JSON.stringify(Object.assign(
      { id: crypto.randomUUID(), type, timestamp: Date.now() }, fields)));
  }
}

function connect() {
  if (screen.stopped || !screen.restaurant) return;
  connection("connecting");
  const socket = new WebSocket(`wss://${location.host}/ws/kitchen/${screen.restaurant}`);
  screen.socket = socket;
  socket.onopen = () => {
    const fields = { token: screen.access, restaurant_id: screen.restaurant };
    if (screen.lastEventId) fields.last_event_id = screen.lastEventId;
    screen.resumedFrom = screen.lastEventId;
    send("authenticate", fields);
  };
  socket.onmessage = (frame) => {
    let message;
    try { message = JSON.parse(frame.data); } catch (e) { return; }
    const data = message.data || {};
    switch (message.type) {
      case "auth_success":
        screen.retries = 0;
        screen.connections += 1;
        connection("live");
        notice("");
        break;
      case "auth_error":
        // The close frame right behind it says why (e.g. DEVICE_REVOKED): acted on in onclose.
        screen.refusal = data.code;
        notice(`The server refused this screen: ${data.code}. ${data.message || ""}`);
        break;
      case "ping":
        send("pong", { data: { timestamp: data.timestamp } });
        break;
      case "resync_required":
        loadTickets();
        break;
      case "replaced":
        screen.stopped = true;
        notice("Another window of this screen took over.");
        break;
      default:
        if (message.type && message.type.startsWith("order.") && data.order) {
          apply(data.order);
          render();
          screen.lastEventId = message.id;
          localStorage.setItem(KEY + "lastEventId", message.id);
        }
    }
  };
  socket.onclose = (event) => {
    if (screen.socket !== socket) return;
    connection("offline", `offline (${event.code}${event.reason ? " " + event.reason : ""})`);
    const refusal = screen.refusal;
    screen.refusal = "";
    if (event.reason === "DEVICE_REVOKED") {
      unpaired("This screen was unpaired by a manager (DEVICE_REVOKED).");
      return;
    }
    if (refusal === "SESSION_REVOKED") {
      unpaired(`This screen's sign-in was ended (${event.reason || refusal}).`);
      return;
    }
    if (refusal && !["TOKEN_EXPIRED", "TOKEN_INVALID", "RATE_LIMITED", "TOO_MANY_CONNECTIONS",
                     "AUTH_TIMEOUT"].includes(refusal)) {
      screen.stopped = true;  // reconnecting would be refused the same way: the notice says why
      return;
    }
    if (screen.stopped) return;
    const delay = Math.min(10000, 500 * 2 ** screen.retries++);
    setTimeout(async () => {
      if (event.code === 4001) await refresh();
      connect();
    }, delay);
  };
}

async function start() {
  render();
  if (!(await refresh())) return;
  await loadTickets();
  connect();
}

window.kitchen = screen;  // for people (and tests) looking at a live screen
$("pairing").addEventListener("submit", (event) => {
  event.preventDefault();
  pair($("code").value);
});
if (screen.refresh && screen.restaurant) {
  start();
} else {
  $("pairing").hidden = false;
  connection("offline", "not paired");
}

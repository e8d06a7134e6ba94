// The demo page: wires RoomsClient (client.js) to the DOM. No framework, no build step.
import { RoomsClient, describeClose } from "./client.js";

const $ = (id) => document.getElementById(id);
const LOG_LIMIT = 500;
const STATE_TEXT = {
  idle: "Not connected",
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  closed: "Disconnected",
};

let client = null;
let activeRoom = null;
const rooms = new Map(); // room -> {messages: [], unread: 0, members: null}

const time = (date) => date.toLocaleTimeString([], { hour12: false });
const sizeText = (bytes) => (bytes < 1024 ? `${bytes} B` : `${(bytes / 1024).toFixed(1)} KB`);

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function showState(state, extra = "") {
  const node = $("state");
  node.dataset.state = state;
  node.textContent = extra ? `${STATE_TEXT[state]} ${extra}` : STATE_TEXT[state];
  document.body.dataset.state = state;
  const open = state === "open";
  const active = open || state === "connecting" || state === "reconnecting";
  $("connect").disabled = active;
  $("disconnect").disabled = !active;
  for (const id of ["whoami", "ping", "join", "send", "leave"]) $(id).disabled = !open;
  $("url").readOnly = active;
  $("token").readOnly = active;
}

function notice(text, kind = "info") {
  const node = $("notice");
  node.textContent = text;
  node.dataset.kind = kind;
}

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host || "127.0.0.1:8001"}/api`;
}

// ----- frame log -----------------------------------------------------------------------------

function logRow({ direction, type, size, time: at, text, error, warning }) {
  const body = $("log");
  const arrow = direction === "out" ? "→ out" : direction === "in" ? "← in" : "• —";
  const row = el("tr", { className: `dir-${direction}${error ? " is-error" : ""}${warning ? " is-warning" : ""}` });
  const preview = text.length > 160 ? `${text.slice(0, 160)}…` : text;
  row.append(
    el("td", {}, time(at)),
    el("td", {}, arrow),
    el("td", {}, error ? el("strong", {}, `⚠ ${type}`) : type),
    el("td", { className: "num" }, size === null ? "" : sizeText(size)),
    el("td", { className: "frame-text", title: text.length > 160 ? `${text.length} characters` : "" },
      warning ? `${preview} (${warning})` : preview),
  );
  body.append(row);
  while (body.rows.length > LOG_LIMIT) body.deleteRow(0);
  const wrap = body.closest(".log-wrap");
  wrap.scrollTop = wrap.scrollHeight;
}

function logEvent(type, text, error = false) {
  logRow({ direction: "event", type, size: null, time: new Date(), text, error });
}

// ----- rooms and messages --------------------------------------------------------------------

function renderRooms() {
  const list = $("room-list");
  list.replaceChildren();
  for (const [room, info] of rooms) {
    const label = info.unread ? `${room} (${info.unread} new)` : room;
    const button = el("button", { type: "button", className: "room-button" }, label);
    button.dataset.room = room;
    button.setAttribute("aria-pressed", String(room === activeRoom));
    button.addEventListener("click", () => selectRoom(room));
    list.append(el("li", {}, button));
  }
  $("no-rooms").hidden = rooms.size > 0;
  $("room-view").hidden = activeRoom === null;
}

function renderMessages() {
  const list = $("messages");
  list.replaceChildren();
  if (activeRoom === null) return;
  for (const message of rooms.get(activeRoom).messages) list.append(messageItem(message));
  list.scrollTop = list.scrollHeight;
}

function messageItem({ from, mine, text, at, note, system, history }) {
  if (system) {
    return el("li", { className: "system" },
      el("time", { dateTime: at.toISOString() }, time(at)), ` · ${text}`);
  }
  const who = mine ? `you (${from || "?"})` : from;
  return el(
    "li",
    { className: [mine ? "mine" : "", history ? "history" : ""].join(" ").trim() },
    el("span", { className: "meta" }, el("span", { className: "from" }, who), " · ",
      el("time", { dateTime: at.toISOString() }, time(at)), note ? ` · ${note}` : ""),
    el("span", { className: "text" }, text),
  );
}

function renderMembers() {
  const list = $("member-list");
  list.replaceChildren();
  const info = activeRoom === null ? null : rooms.get(activeRoom);
  const members = info && info.members;
  $("member-count").textContent = members ? `${members.count} ${members.count === 1 ? "user" : "users"}` : "–";
  if (!members) return;
  for (const { user, connections } of members.users) {
    const mine = client && user === client.connectionId;
    const label = `${user}${connections > 1 ? ` ×${connections}` : ""}${mine ? " (you)" : ""}`;
    list.append(el("li", {}, label));
  }
  if (members.truncated) list.append(el("li", {}, `… and ${members.count - members.users.length} more`));
}

async function refreshMembers(room) {
  if (!client || !rooms.has(room)) return;
  try {
    const reply = await client.members(room);
    if (rooms.has(room)) rooms.get(room).members = reply.data;
  } catch {
    return; // presence off, or not a member any more: the list stays as it was
  }
  if (room === activeRoom) renderMembers();
}

function selectRoom(room) {
  activeRoom = room;
  if (room !== null) rooms.get(room).unread = 0;
  $("room-title").textContent = room === null ? "Messages" : `Messages in ${room}`;
  $("send-room").textContent = room ?? "room";
  renderRooms();
  renderMessages();
  renderMembers();
}

function addMessage(room, message) {
  if (!rooms.has(room)) rooms.set(room, { messages: [], unread: 0, members: null });
  const info = rooms.get(room);
  info.messages.push(message);
  if (room === activeRoom) {
    $("messages").append(messageItem(message));
    $("messages").scrollTop = $("messages").scrollHeight;
  } else {
    info.unread += 1;
    renderRooms();
  }
}

function dataText(data) {
  if (data && typeof data === "object" && typeof data.text === "string") return data.text;
  return JSON.stringify(data);
}

// ----- client wiring -------------------------------------------------------------------------

function wire(c) {
  c.addEventListener("state", (e) => {
    const { state, attempt, delayMs } = e.detail;
    showState(state, state === "reconnecting" ? `(attempt ${attempt}, in ${(delayMs / 1000).toFixed(1)} s)` : "");
  });
  c.addEventListener("open", (e) => {
    $("connection-id").textContent = "– (sent with the welcome)";
    $("welcome").textContent = "waiting…";
    if (e.detail.reconnected) notice("Reconnected.", "ok");
    else notice("");
    logEvent("open", e.detail.reconnected ? `reconnected to ${c.url}` : `connected to ${c.url}`);
  });
  c.addEventListener("welcome", (e) => {
    $("connection-id").textContent = e.detail.connectionId;
    $("welcome").textContent = `connection ${e.detail.connectionId}, protocol ${e.detail.protocol}`;
  });
  c.addEventListener("message", (e) => {
    const { room, from, data, time: at, seq, replay } = e.detail;
    const note = replay ? `#${seq}, missed while away` : seq ? `#${seq}` : "";
    addMessage(room, { from, mine: false, text: dataText(data), at, note });
  });
  c.addEventListener("presence", (e) => {
    const { room, event, user } = e.detail;
    addMessage(room, { system: true, at: new Date(), text: `${user} ${event === "join" ? "joined" : "left"}` });
    refreshMembers(room);
  });
  c.addEventListener("gap", (e) => {
    const { room, from, to } = e.detail;
    const what = from === to ? `message #${from} is` : `messages #${from}–#${to} are`;
    addMessage(room, { system: true, at: new Date(), text: `${what} no longer available` });
  });
  c.addEventListener("frame", (e) => logRow(e.detail));
  c.addEventListener("error", (e) => notice(`Server error: ${e.detail.code}: ${e.detail.message}`, "error"));
  c.addEventListener("close", (e) => {
    const d = e.detail;
    const text = d.httpStatus !== null ? `refused with HTTP ${d.httpStatus} (close ${d.code})` : describeClose(d.code, d.reason);
    $("last-close").textContent = `${text} at ${time(new Date())}`;
    $("last-close").dataset.code = String(d.code);
    if (d.httpStatus !== null) $("last-close").dataset.httpStatus = String(d.httpStatus);
    logEvent("close", text, !d.intentional);
    if (d.intentional) notice("Disconnected.");
    else if (!d.willReconnect && d.httpStatus !== null) notice(`Connection refused: HTTP ${d.httpStatus}. Check the token and the URL.`, "error");
    else if (!d.willReconnect && !d.wasOpen) notice(`Could not connect: ${text}. Is the gateway running and the URL right?`, "error");
    else if (!d.willReconnect) notice(`Connection lost (${text}); gave up reconnecting. Press Connect to try again.`, "error");
  });
  c.addEventListener("reconnecting", (e) => {
    const { attempt, maxAttempts, delayMs } = e.detail;
    notice(`Connection lost; reconnecting in ${(delayMs / 1000).toFixed(1)} s (attempt ${attempt} of ${maxAttempts}).`, "warn");
    logEvent("reconnect", `attempt ${attempt}/${maxAttempts} in ${delayMs} ms`);
  });
  c.addEventListener("rejoined", (e) => {
    const { rooms: ok, failed } = e.detail;
    const failedText = failed.length ? `; could not re-join ${failed.map((f) => f.room).join(", ")}` : "";
    notice(`Reconnected and re-joined ${ok.join(", ") || "no rooms"}${failedText}.`, failed.length ? "warn" : "ok");
    logEvent("rejoin", `re-joined ${ok.join(", ")}${failedText}`, failed.length > 0);
    for (const room of ok) {
      addMessage(room, { system: true, at: new Date(), text: "re-joined after reconnecting" });
      refreshMembers(room);
    }
    for (const f of failed) forgetRoom(f.room);
  });
}

function forgetRoom(room) {
  rooms.delete(room);
  if (activeRoom === room) activeRoom = rooms.size ? rooms.keys().next().value : null;
  selectRoom(activeRoom);
}

async function act(label, fn) {
  try {
    return await fn();
  } catch (err) {
    notice(`${label} failed: ${err.message}`, "error");
    return null;
  }
}

function onSubmit(id, handler) {
  $(id).addEventListener("submit", (e) => {
    e.preventDefault();
    handler();
  });
}

function setup() {
  $("url").value = defaultUrl();
  showState("idle");

  onSubmit("connect-form", () => {
    if (client) client.close();
    client = new RoomsClient($("url").value.trim(), { token: $("token").value.trim() });
    wire(client);
    rooms.clear();
    selectRoom(null);
    $("last-close").textContent = "none";
    delete $("last-close").dataset.code;
    delete $("last-close").dataset.httpStatus;
    client.connect().catch(() => {}); // reported through "close"
  });
  $("disconnect").addEventListener("click", () => client && client.close(1000, "user disconnected"));

  onSubmit("tools-form", () =>
    act("whoami", async () => {
      const reply = await client.whoami();
      const { connectionId, rooms: joined } = reply.data;
      $("tool-result").textContent = `whoami: ${connectionId} in [${joined.join(", ")}]`;
    }),
  );
  $("ping").addEventListener("click", () =>
    act("ping", async () => {
      const started = performance.now();
      await client.ping();
      $("tool-result").textContent = `pong in ${Math.round(performance.now() - started)} ms`;
    }),
  );

  onSubmit("join-form", () => {
    const input = $("join-room");
    const room = input.value.trim();
    act("join", async () => {
      const reply = await client.join(room);
      if (!rooms.has(room)) rooms.set(room, { messages: [], unread: 0, members: null });
      const members = reply.data.members;
      // The room's recent history first (protocol v2), then the join itself.
      try {
        const past = await client.history(room, { limit: 20 });
        for (const m of past.data.messages) {
          addMessage(room, { from: m.from, mine: false, text: dataText(m.data), at: new Date(m.ts), note: `#${m.seq}, earlier`, history: true });
        }
      } catch {
        // history off on this server: nothing to show
      }
      addMessage(room, { system: true, at: new Date(), text: `you joined ${room} (${members} member${members === 1 ? "" : "s"})` });
      selectRoom(room);
      refreshMembers(room);
      input.value = "";
      $("message").focus();
    });
  });

  $("leave").addEventListener("click", () => {
    const room = activeRoom;
    if (room === null) return;
    act("leave", async () => {
      await client.leave(room);
      forgetRoom(room);
      notice(`Left ${room}.`);
      $("join-room").focus();
    });
  });

  onSubmit("send-form", () => {
    const box = $("message");
    const text = box.value;
    const room = activeRoom;
    if (!text || room === null) return;
    act("send", async () => {
      const pendingSend = client.send(room, { text });
      box.value = "";
      const reply = await pendingSend;
      const { delivered, gone, failed, queued, seq } = reply.data;
      const counts = `delivered ${delivered}${queued ? `, queued ${queued}` : ""}${gone ? `, gone ${gone}` : ""}${failed ? `, failed ${failed}` : ""}`;
      addMessage(room, { from: client.connectionId, mine: true, text, at: new Date(), note: seq ? `#${seq} · ${counts}` : counts });
    });
  });
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("send-form").requestSubmit();
    }
  });
  $("clear-log").addEventListener("click", () => $("log").replaceChildren());

  // For tests and the console: the current client.
  window.roomsDemo = { get client() { return client; } };
}

setup();

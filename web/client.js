// client.js: a small, dependency-free browser client for the ws-rooms protocol (docs/protocol.md).
//
//   import { RoomsClient } from "./client.js";
//   const client = new RoomsClient("ws://127.0.0.1:8001/api", { token: "..." });
//   client.addEventListener("message", (e) => console.log(e.detail.room, e.detail.from, e.detail.data));
//   await client.connect();
//   await client.join("lobby");
//   await client.send("lobby", { text: "hi" });
//
// Events (CustomEvent; the payload is in `event.detail`): state, open, welcome, message, presence,
// gap, frame, close, reconnecting, rejoined, error, and one per any other server frame type
// (`client.on("typing", fn)`). See docs/browser-client.md.
//
// Protocol v2 (docs/protocol.md): the client tracks the last `seq` of every room, re-joins with
// `since` after a reconnect, drops duplicates by `seq`, fills gaps from `history` (or emits
// `gap`), resends unacknowledged sends with their `id`, takes `token` as a string or an async
// function called on every (re)connect, and renews the connection before API Gateway's 2-hour
// limit.

/** Default reconnect policy: full-jitter exponential backoff, bounded. */
export const DEFAULT_RECONNECT = Object.freeze({
  enabled: true,
  baseMs: 250, // the first retry waits up to this long
  capMs: 5000, // no single wait is longer than this
  maxAttempts: 10, // then give up (state "closed")
  stopOnStatus: [401, 403], // a refused upgrade with these HTTP statuses is final
});

/** API Gateway closes every connection after 2 hours: renew it 5 minutes before. */
export const DEFAULT_MAX_SESSION_MS = (7200 - 300) * 1000;

/**
 * Sans-I/O resume decisions for one room message (shared logic with the Python client):
 * "deliver", "duplicate" (seq already seen) or "gap" (numbers missing before it).
 */
export function judge(last, seq) {
  if (last === undefined || last === null) return { verdict: "deliver" };
  if (seq <= last) return { verdict: "duplicate" };
  if (seq === last + 1) return { verdict: "deliver" };
  return { verdict: "gap", from: last + 1, to: seq - 1 };
}

/** API Gateway's per-frame limit: a larger client frame closes the connection with 1009. */
export const FRAME_LIMIT_BYTES = 32 * 1024;

const CLOSE_TEXT = {
  1000: "normal closure",
  1001: "going away (idle timeout, maximum duration or server shutdown)",
  1005: "no status",
  1006: "abnormal closure (no close frame: refused upgrade or network failure)",
  1008: "policy violation",
  1009: "message too big (a frame over 32 KB or a message over 128 KB)",
  1011: "server error",
};

/** A human description of a close code. */
export function describeClose(code, reason = "") {
  const text = CLOSE_TEXT[code] || "closed";
  return reason ? `${code} ${text}: ${reason}` : `${code} ${text}`;
}

/** Full-jitter backoff: a random delay in [0, min(cap, base * 2^attempt)). attempt counts from 0. */
export function backoffDelay(attempt, { baseMs, capMs }, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** attempt);
  return Math.floor(random() * ceiling);
}

/** The HTTP URL of a WebSocket URL (ws: -> http:, wss: -> https:). */
export function httpUrlOf(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  return url.toString();
}

/** UTF-8 size of a string, in bytes. */
export function byteLength(text) {
  return new TextEncoder().encode(text).length;
}

/** A request answered with an `error` frame, or that timed out, or whose connection closed. */
export class RequestError extends Error {
  constructor(code, message, frame = null) {
    super(`${code}: ${message}`);
    this.name = "RequestError";
    this.code = code; // protocol code (bad_request, not_member...) or "timeout" / "closed"
    this.frame = frame; // the error frame, when there is one
  }
}

/** Client events that a server frame type of the same name must not shadow. */
const INTERNAL_EVENTS = new Set(["state", "open", "close", "frame", "reconnecting", "rejoined", "gap", "welcome", "identity"]);

let idCounter = 0;
function newId() {
  idCounter += 1;
  const random = Math.random().toString(36).slice(2, 8);
  return `c${idCounter.toString(36)}-${random}`;
}

/**
 * One logical connection to a ws-rooms WebSocket API, across reconnects.
 *
 * States: "idle" (never connected), "connecting", "open", "reconnecting" (waiting before the
 * next attempt), "closed" (intentional close, refused, or reconnect attempts exhausted).
 */
export class RoomsClient extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.token = options.token || ""; // a string, or an async function called on every dial
    this.maxSessionMs = options.maxSessionMs ?? DEFAULT_MAX_SESSION_MS;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10000;
    this.probeRefusals = options.probeRefusals ?? true;
    this.rejoin = options.rejoin ?? true;
    this.reconnectPolicy = { ...DEFAULT_RECONNECT, ...(options.reconnect || {}) };
    this.WebSocketImpl = options.WebSocket || globalThis.WebSocket;
    this.random = options.random || Math.random;

    this._state = "idle";
    this._ws = null;
    this._pending = new Map(); // id -> {resolve, reject, timer, action}
    this._rooms = new Set();
    this._lastSeq = new Map(); // room -> last seq delivered (protocol v2)
    this._held = new Map(); // room -> messages held while a gap before them is filled
    this._unacked = new Map(); // send id -> frame, resent after a reconnect
    this._sessionTimer = null;
    this._refusedOnce = false;
    this._attempt = 0; // failed attempts since the last open
    this._retryTimer = null;
    this._intentional = false;
    this._everOpened = false; // reconnects happen only after a connection was once open
    this._reconnecting = false;
    this.connectionId = null;
    this.welcome = null;
    this.lastClose = null;
  }

  /** The current state (see the class comment). */
  get state() {
    return this._state;
  }

  /** The rooms this client has joined (re-joined after a reconnect). */
  get rooms() {
    return [...this._rooms].sort();
  }

  /** The URL dialled with a string token: `url` plus `?token=` (not for token functions). */
  get connectUrl() {
    const url = new URL(this.url);
    if (typeof this.token === "string" && this.token) url.searchParams.set("token", this.token);
    return url.toString();
  }

  /** The last `seq` seen of `room` (what a resume starts after), or undefined. */
  lastSeq(room) {
    return this._lastSeq.get(room);
  }

  /** Call `fn(detail)` for every event of `type` (any server frame type included). */
  on(type, fn) {
    this.addEventListener(type, (event) => fn(event.detail));
    return this;
  }

  async _dialUrl() {
    const token = typeof this.token === "function" ? await this.token() : this.token;
    const url = new URL(this.url);
    if (token) url.searchParams.set("token", token);
    return url.toString();
  }

  /** Open the connection. Resolves on open; rejects if this attempt closes before opening. */
  connect() {
    this._intentional = false;
    this._everOpened = false;
    this._attempt = 0;
    this._reconnecting = false;
    this._clearRetry();
    return this._dial();
  }

  /** Close on purpose: no reconnect. Pending requests reject with code "closed". */
  close(code = 1000, reason = "client closed") {
    this._intentional = true;
    this._clearRetry();
    if (this._ws && this._ws.readyState < 2) {
      this._ws.close(code, reason);
    } else {
      this._setState("closed");
    }
  }

  /**
   * Send `{action, ...fields, id}` and resolve with the reply frame carrying the same `id`.
   * Rejects with RequestError: the protocol's error code, "timeout", or "closed".
   */
  request(action, fields = {}, options = {}) {
    return this._requestWithId(newId(), action, fields, options);
  }

  ping() {
    return this.request("ping");
  }

  whoami() {
    return this.request("whoami");
  }

  /**
   * Join `room`. With `since` (a seq), the messages after it are replayed (docs/protocol.md);
   * either way the room is tracked and resumed after every reconnect.
   */
  async join(room, { since } = {}) {
    const fields = since === undefined || since === null ? { room } : { room, since };
    if (fields.since !== undefined && !this._lastSeq.has(room)) this._lastSeq.set(room, since);
    const reply = await this.request("join", fields);
    this._rooms.add(room);
    this._startCursor(room, reply.data.seq, fields.since !== undefined);
    return reply;
  }

  async leave(room) {
    const reply = await this.request("leave", { room });
    this._rooms.delete(room);
    this._lastSeq.delete(room);
    return reply;
  }

  /**
   * Send `data` (any JSON value) to every other member of `room`; resolves with the `sent` reply.
   * Unacknowledged sends are resent after a reconnect with the same `id`: the server answers
   * `duplicate: true` if the first had been accepted, so nothing is delivered twice.
   */
  async send(room, data, { id } = {}) {
    const frameId = id || newId();
    // A frame over API Gateway's limit closes the connection (1009): resending it would only
    // close the next one too.
    const resendable = byteLength(JSON.stringify({ room, data, action: "send", id: frameId })) <= FRAME_LIMIT_BYTES;
    this._unacked.set(frameId, { action: "send", room, data, id: frameId });
    try {
      for (let attempt = 0; ; attempt += 1) {
        try {
          return await this._requestWithId(frameId, "send", { room, data });
        } catch (err) {
          const retry = resendable && err.code === "closed" && !this._intentional && attempt < 5;
          if (!retry) throw err;
          await this._reopened();
        }
      }
    } finally {
      this._unacked.delete(frameId);
    }
  }

  /** The room's history (docs/protocol.md): `{before, after, limit}` are optional. */
  history(room, { before, after, limit } = {}) {
    const fields = { room };
    if (before !== undefined) fields.before = before;
    if (after !== undefined) fields.after = after;
    if (limit !== undefined) fields.limit = limit;
    return this.request("history", fields);
  }

  /** Who is in the room: `{count, users: [{user, connections}], truncated}`. */
  members(room) {
    return this.request("members", { room });
  }

  _requestWithId(id, action, fields, { timeoutMs = this.requestTimeoutMs } = {}) {
    if (!this._ws || this._ws.readyState !== 1) {
      return Promise.reject(new RequestError("closed", `not connected (state ${this._state})`));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RequestError("timeout", `no reply to ${action} within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(id, { resolve, reject, timer, action });
      this._sendRaw({ ...fields, action, id });
    });
  }

  /** Resolves when the connection is open again (rejects when the client closes for good). */
  _reopened() {
    if (this._state === "open") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onState = (event) => {
        if (event.detail.state === "open") {
          this.removeEventListener("state", onState);
          resolve();
        } else if (event.detail.state === "closed") {
          this.removeEventListener("state", onState);
          reject(new RequestError("closed", "the client closed"));
        }
      };
      this.addEventListener("state", onState);
    });
  }

  _startCursor(room, head, resuming) {
    if (typeof head !== "number") return;
    const last = this._lastSeq.get(room);
    if (last === undefined) this._lastSeq.set(room, head);
    else if (!resuming) this._lastSeq.set(room, Math.max(head, last));
  }

  /** A room message: deliver in seq order, drop duplicates, fill gaps from history. */
  _roomMessage(data, frame) {
    const room = data.room;
    if (this._held.has(room)) {
      this._held.get(room).push([data, frame]);
      return;
    }
    const judged = judge(this._lastSeq.get(room), data.seq);
    if (judged.verdict === "duplicate") return;
    if (judged.verdict === "gap") {
      this._held.set(room, [[data, frame]]);
      this._fill(room, judged.from, judged.to);
      return;
    }
    this._lastSeq.set(room, data.seq);
    this._emitMessage(data);
  }

  _emitMessage(data) {
    this._emit("message", {
      room: data.room,
      from: data.from,
      data: data.data,
      seq: data.seq,
      mid: data.mid,
      ts: data.ts,
      replay: Boolean(data.replay),
      time: new Date(),
    });
  }

  async _fill(room, from, to) {
    let found = new Map();
    try {
      const reply = await this.history(room, { after: from - 1, before: to + 1, limit: Math.min(100, to - from + 1) });
      for (const message of reply.data.messages || []) found.set(message.seq, message);
    } catch {
      found = new Map();
    }
    let seq = from;
    while (seq <= to) {
      if (found.has(seq)) {
        this._lastSeq.set(room, seq);
        this._emitMessage(found.get(seq));
        seq += 1;
        continue;
      }
      let end = seq;
      while (end + 1 <= to && !found.has(end + 1)) end += 1;
      this._emit("gap", { room, from: seq, to: end });
      this._lastSeq.set(room, end);
      seq = end + 1;
    }
    const held = this._held.get(room) || [];
    this._held.delete(room);
    for (const [data, frame] of held) this._roomMessage(data, frame);
  }

  // ----- internals ---------------------------------------------------------------------------

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, extra = {}) {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this._emit("state", { state, previous, ...extra });
  }

  _clearRetry() {
    if (this._retryTimer !== null) {
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
    }
  }

  _dial() {
    if (this._ws && this._ws.readyState < 2) {
      // Already connecting or open: detach the old socket so its close is not "unexpected".
      const old = this._ws;
      this._ws = null;
      old.onopen = old.onmessage = old.onclose = old.onerror = null;
      old.close(1000, "replaced");
    }
    this._setState("connecting");
    return this._dialUrl().then((url) => this._open(url), (err) => {
      this._setState("closed");
      throw err;
    });
  }

  _open(url) {
    let ws;
    try {
      ws = new this.WebSocketImpl(url);
    } catch (err) {
      this._setState("closed");
      return Promise.reject(err);
    }
    this._ws = ws;
    let opened = false;
    return new Promise((resolve, reject) => {
      ws.onopen = () => {
        opened = true;
        this._everOpened = true;
        const wasReconnect = this._attempt > 0 || this._reconnecting;
        this._attempt = 0;
        this._reconnecting = false;
        this.connectionId = null;
        this.welcome = null;
        this._refusedOnce = false;
        this._setState("open");
        this._emit("open", { url: this.url, reconnected: wasReconnect });
        resolve();
        this._armSession(ws);
        // Unacknowledged sends are resent by send() itself once this open is seen.
        if (wasReconnect && this.rejoin && this._rooms.size) this._rejoin();
      };
      ws.onmessage = (event) => this._onMessage(event.data);
      ws.onclose = (event) => {
        if (this._ws !== ws) return;
        this._ws = null;
        this._disarmSession();
        this._onClose(event, opened).then(
          (detail) => {
            if (!opened) reject(new RequestError("closed", detail.description));
          },
          () => {},
        );
      };
    });
  }

  /** Renew the connection before API Gateway's 2-hour limit, resuming every room. */
  _armSession(ws) {
    this._disarmSession();
    if (!(this.maxSessionMs > 0)) return;
    this._sessionTimer = setTimeout(() => {
      this._sessionTimer = null;
      if (this._ws !== ws) return;
      this._reconnecting = true;
      ws.close(1000, "renewing before the 2-hour limit"); // onclose reconnects and resumes
    }, this.maxSessionMs);
  }

  _disarmSession() {
    if (this._sessionTimer !== null) {
      clearTimeout(this._sessionTimer);
      this._sessionTimer = null;
    }
  }

  async _rejoin() {
    const rooms = this.rooms;
    const failed = [];
    for (const room of rooms) {
      try {
        const since = this._lastSeq.get(room);
        const reply = await this.request("join", since === undefined ? { room } : { room, since });
        this._startCursor(room, reply.data.seq, since !== undefined);
      } catch (err) {
        failed.push({ room, error: err.message });
        this._rooms.delete(room);
      }
    }
    this._emit("rejoined", { rooms: rooms.filter((r) => !failed.some((f) => f.room === r)), failed });
  }

  _sendRaw(frame) {
    const text = JSON.stringify(frame);
    const size = byteLength(text);
    this._emit("frame", {
      direction: "out",
      type: frame.action,
      size,
      time: new Date(),
      text,
      frame,
      error: false,
      warning: size > FRAME_LIMIT_BYTES ? `over the ${FRAME_LIMIT_BYTES}-byte frame limit: expect close 1009` : null,
    });
    this._ws.send(text);
  }

  _onMessage(raw) {
    const text = typeof raw === "string" ? raw : "";
    let frame = null;
    try {
      frame = JSON.parse(text);
    } catch {
      frame = null;
    }
    const isObject = frame !== null && typeof frame === "object" && !Array.isArray(frame);
    // API Gateway's own failure frame ({"message": "Internal server error", ...}) has no type.
    const type = isObject ? frame.type || (frame.message ? "gateway_error" : "unknown") : "unparsable";
    const error = type === "error" || type === "gateway_error" || type === "unparsable";
    this._emit("frame", {
      direction: "in",
      type,
      size: typeof raw === "string" ? byteLength(raw) : raw.size || raw.byteLength || 0,
      time: new Date(),
      text,
      frame,
      error,
    });
    if (!isObject) return;
    const data = frame.data || {};
    if (typeof frame.id === "string" && this._pending.has(frame.id)) {
      const pending = this._pending.get(frame.id);
      this._pending.delete(frame.id);
      clearTimeout(pending.timer);
      if (type === "error") {
        pending.reject(new RequestError(data.code || "error", data.message || "", frame));
      } else {
        pending.resolve(frame);
      }
    }
    if (type === "welcome") {
      this.connectionId = data.connectionId || null;
      this.welcome = data;
      this._emit("welcome", data);
    } else if (type === "identity") {
      this.connectionId = data.connectionId || this.connectionId;
    } else if (type === "message") {
      if (typeof data.seq === "number") {
        this._roomMessage(data, frame);
      } else {
        this._emit("message", { room: data.room, from: data.from, data: data.data, time: new Date() });
      }
    } else if (type === "error" && !(typeof frame.id === "string")) {
      this._emit("error", { code: data.code, message: data.message, frame });
    } else if (type === "gateway_error") {
      this._emit("error", { code: "gateway_error", message: frame.message, frame });
    } else if (!INTERNAL_EVENTS.has(type) && type !== "unknown" && type !== "unparsable") {
      // presence, members, history, sent, joined... and any frame type an app adds.
      this._emit(type, data);
    }
  }

  async _onClose(event, opened) {
    for (const [id, pending] of this._pending) {
      clearTimeout(pending.timer);
      pending.reject(new RequestError("closed", `connection closed (${event.code}) before the reply to ${pending.action}`));
      this._pending.delete(id);
    }
    let httpStatus = null;
    if (!opened && !this._intentional && this.probeRefusals) {
      httpStatus = await this._probe();
    }
    const policy = this.reconnectPolicy;
    let refusedForGood = httpStatus !== null && policy.stopOnStatus.includes(httpStatus);
    if (refusedForGood && typeof this.token === "function" && !this._refusedOnce) {
      // An expired token: the next dial asks the token function for a fresh one. The same
      // refusal twice in a row is final.
      this._refusedOnce = true;
      refusedForGood = false;
    }
    const attemptsLeft = this._attempt < policy.maxAttempts;
    const willReconnect =
      !this._intentional && policy.enabled && this._everOpened && !refusedForGood && attemptsLeft;
    let description = describeClose(event.code, event.reason);
    if (httpStatus !== null) description = `upgrade refused with HTTP ${httpStatus} (close ${event.code})`;
    const detail = {
      code: event.code,
      reason: event.reason,
      wasClean: event.wasClean,
      wasOpen: opened,
      intentional: this._intentional,
      httpStatus,
      willReconnect,
      description,
    };
    this.lastClose = detail;
    this._emit("close", detail);
    if (willReconnect) {
      this._scheduleReconnect();
    } else {
      if (!this._intentional && this._everOpened && policy.enabled && !refusedForGood) {
        detail.gaveUp = true; // attempts exhausted
      }
      this._setState("closed", { gaveUp: Boolean(detail.gaveUp) });
    }
    return detail;
  }

  /** After an upgrade failed before open: a plain GET shows the HTTP status (same origin only). */
  async _probe() {
    if (typeof fetch !== "function") return null;
    try {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), 3000);
      const response = await fetch(httpUrlOf(this.connectUrl), {
        cache: "no-store",
        signal: controller.signal,
      });
      clearTimeout(timer);
      // 426 means "this URL wants an upgrade and would accept it": no refusal to report.
      return response.status === 426 || response.ok ? null : response.status;
    } catch {
      return null; // unreachable, or cross-origin without CORS
    }
  }

  _scheduleReconnect() {
    const policy = this.reconnectPolicy;
    const attempt = this._attempt;
    const delayMs = backoffDelay(attempt, policy, this.random);
    this._attempt += 1;
    this._reconnecting = true;
    this._setState("reconnecting", { attempt: attempt + 1, delayMs });
    this._emit("reconnecting", { attempt: attempt + 1, maxAttempts: policy.maxAttempts, delayMs });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._dial().catch(() => {}); // failures are reported through "close"
    }, delayMs);
  }
}

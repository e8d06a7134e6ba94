// client.js: a small, dependency-free browser client for the ws-rooms protocol (docs/protocol.md).
//
//   import { RoomsClient } from "./client.js";
//   const client = new RoomsClient("ws://127.0.0.1:8001/api", { token: "..." });
//   client.addEventListener("message", (e) => console.log(e.detail.room, e.detail.from, e.detail.data));
//   await client.connect();
//   await client.join("lobby");
//   await client.send("lobby", { text: "hi" });
//
// Events (CustomEvent; the payload is in `event.detail`): state, open, welcome, message, frame,
// close, reconnecting, rejoined, error. See docs/browser-client.md.

/** Default reconnect policy: full-jitter exponential backoff, bounded. */
export const DEFAULT_RECONNECT = Object.freeze({
  enabled: true,
  baseMs: 250, // the first retry waits up to this long
  capMs: 5000, // no single wait is longer than this
  maxAttempts: 10, // then give up (state "closed")
  stopOnStatus: [401, 403], // a refused upgrade with these HTTP statuses is final
});

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
    this.token = options.token || "";
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

  /** The URL actually dialled: `url` plus `?token=` when a token is set. */
  get connectUrl() {
    const url = new URL(this.url);
    if (this.token) url.searchParams.set("token", this.token);
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
  request(action, fields = {}, { timeoutMs = this.requestTimeoutMs } = {}) {
    if (!this._ws || this._ws.readyState !== 1) {
      return Promise.reject(new RequestError("closed", `not connected (state ${this._state})`));
    }
    const id = newId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RequestError("timeout", `no reply to ${action} within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(id, { resolve, reject, timer, action });
      this._sendRaw({ ...fields, action, id });
    });
  }

  ping() {
    return this.request("ping");
  }

  whoami() {
    return this.request("whoami");
  }

  async join(room) {
    const reply = await this.request("join", { room });
    this._rooms.add(room);
    return reply;
  }

  async leave(room) {
    const reply = await this.request("leave", { room });
    this._rooms.delete(room);
    return reply;
  }

  /** Send `data` (any JSON value) to every other member of `room`; resolves with the `sent` reply. */
  send(room, data) {
    return this.request("send", { room, data });
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
    const url = this.connectUrl;
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
        this._setState("open");
        this._emit("open", { url: this.url, reconnected: wasReconnect });
        resolve();
        if (wasReconnect && this.rejoin && this._rooms.size) this._rejoin();
      };
      ws.onmessage = (event) => this._onMessage(event.data);
      ws.onclose = (event) => {
        if (this._ws !== ws) return;
        this._ws = null;
        this._onClose(event, opened).then(
          (detail) => {
            if (!opened) reject(new RequestError("closed", detail.description));
          },
          () => {},
        );
      };
    });
  }

  async _rejoin() {
    const rooms = this.rooms;
    const failed = [];
    for (const room of rooms) {
      try {
        await this.request("join", { room });
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
      this._emit("message", { room: data.room, from: data.from, data: data.data, time: new Date() });
    } else if (type === "error" && !(typeof frame.id === "string")) {
      this._emit("error", { code: data.code, message: data.message, frame });
    } else if (type === "gateway_error") {
      this._emit("error", { code: "gateway_error", message: frame.message, frame });
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
    const refusedForGood = httpStatus !== null && policy.stopOnStatus.includes(httpStatus);
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

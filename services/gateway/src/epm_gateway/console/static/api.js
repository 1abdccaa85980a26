// The gateway's /v1 API as the console uses it: the session cookie goes with every
// same-origin request; changes carry X-EPM-Console (the gateway's CSRF check).

export class ApiError extends Error {
  constructor(status, message, problem) {
    super(message);
    this.status = status;
    this.problem = problem;
  }
}

let onSessionEnded = () => {};

export function whenSessionEnds(handler) {
  onSessionEnded = handler;
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json, application/problem+json" };
  if (method !== "GET") headers["X-EPM-Console"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "cannot reach the EPM gateway: check your connection and try again");
  }
  if (response.status === 204) return {};
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = data.detail || data.title || `the server answered HTTP ${response.status}`;
    const error = new ApiError(response.status, message, data);
    if (response.status === 401 && path !== "/v1/session") onSessionEnded(error);
    throw error;
  }
  return data;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

// The domain event stream: one EventSource, reconnecting by itself (Last-Event-ID).
export class EventStream {
  constructor(onEvent, onState) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.source = null;
  }

  open(tenant) {
    this.close();
    const source = new EventSource(`/v1/events${query({ tenant })}`);
    source.onopen = () => this.onState("live");
    source.onerror = () => this.onState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    source.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      this.onEvent(event, Number(message.lastEventId));
    };
    this.source = source;
  }

  close() {
    if (this.source) this.source.close();
    this.source = null;
  }
}

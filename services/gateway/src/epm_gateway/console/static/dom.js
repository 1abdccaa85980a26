// Small DOM helpers: elements are built with textContent, never from HTML strings.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

export function definitions(pairs) {
  return h("dl", {}, pairs.filter(([, v]) => v).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// One line at the top of the console: what went wrong, or what just happened.
export function notify(message, kind = "bad") {
  const box = $("#notice");
  box.replaceChildren(
    h("span", {}, message),
    h("button", { type: "button", class: "secondary", onclick: () => (box.hidden = true) }, "Dismiss"),
  );
  box.className = `notice ${kind}`;
  box.hidden = false;
}

export function clearNotice() {
  $("#notice").hidden = true;
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// The console shell: sign in and out, the customer switcher, the sections, the live stream.
import { api, ApiError, EventStream, whenSessionEnds } from "./api.js";
import { $, $$, h, notify, clearNotice } from "./dom.js";
import { requestsView } from "./requests.js";
import { rulesView } from "./rules.js";
import { offlineView } from "./offline.js";
import { auditView } from "./audit.js";
import { pushView } from "./push.js";

const MSP_ROLES = new Set(["msp_admin", "msp_technician"]);

// What every section reads: who is signed in and which customer is chosen (null: all).
export const ctx = {
  me: null,
  tenant: null,
  tenants: [],
  get isMsp() { return this.me !== null && this.me.tenant === null; },
  get mayDecideGlobally() { return this.me !== null && MSP_ROLES.has(this.me.role); },
};

const views = {
  requests: requestsView(ctx),
  rules: rulesView(ctx),
  offline: offlineView(ctx),
  audit: auditView(ctx),
  settings: pushView(ctx),
};
let current = "requests";

const stream = new EventStream(
  (event, seq) => Object.values(views).forEach((v) => v.onEvent && v.onEvent(event, seq)),
  (state) => {
    const live = $("#live");
    live.textContent = { live: "Live", reconnecting: "Reconnecting…", closed: "Not live" }[state] || state;
    live.className = `live ${state === "live" ? "on" : "off"}`;
    if (state === "live") views.requests.reload(); // nothing missed while the stream was down
  },
);

function showSignIn(message = "") {
  stream.close();
  ctx.me = null;
  $("#app").hidden = true;
  $("#session-bar").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = message;
  $("#token").value = "";
  $("#token").focus();
}

async function start(me) {
  ctx.me = me;
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#session-bar").hidden = false;
  $("#me").textContent = `${me.name} (${me.role.replace("_", " ")})`;
  $$("[data-view]").forEach((b) => (b.hidden = b.dataset.view === "rules" && !canReadRules()));
  await loadTenants();
  show(current);
  stream.open(ctx.tenant);
}

function canReadRules() {
  return ctx.me.role !== "integrator";
}

async function loadTenants() {
  const picker = $("#tenant");
  if (!ctx.isMsp) {
    ctx.tenant = ctx.me.tenant;
    $("#tenant-picker").hidden = true;
    $("#tenant-fixed").hidden = !ctx.tenant;
    $("#tenant-fixed").textContent = ctx.tenant ? `Customer: ${ctx.tenant}` : "";
    return;
  }
  const page = await api("GET", "/v1/tenants?limit=500");
  ctx.tenants = page.items;
  picker.replaceChildren(
    h("option", { value: "" }, "All customers"),
    ...page.items.map((t) => h("option", { value: t.id }, `${t.name} (${t.id})`)),
  );
  picker.value = ctx.tenant ?? "";
  $("#tenant-picker").hidden = false;
  $("#tenant-fixed").hidden = true;
}

function show(name) {
  current = name;
  clearNotice();
  for (const button of $$("[data-view]")) {
    if (button.dataset.view === name) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  for (const [key, view] of Object.entries(views)) {
    $(`#view-${key}`).hidden = key !== name;
    if (key === name) view.show();
  }
}

$("#signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const token = $("#token").value.trim();
  $("#token").value = ""; // the token is not kept by the page, only the cookie is
  try {
    await start(await api("POST", "/v1/session", { token }));
  } catch (err) {
    showSignIn(err instanceof ApiError ? err.message : String(err));
  }
});

$("#sign-out").addEventListener("click", async () => {
  try {
    await api("DELETE", "/v1/session");
  } finally {
    showSignIn("You are signed out.");
  }
});

$("#tenant").addEventListener("change", () => {
  ctx.tenant = $("#tenant").value || null;
  stream.open(ctx.tenant);
  Object.values(views).forEach((v) => v.tenantChanged && v.tenantChanged());
  show(current);
});

for (const button of $$("[data-view]")) button.addEventListener("click", () => show(button.dataset.view));

whenSessionEnds((err) => showSignIn(err.message));

window.addEventListener("unhandledrejection", (e) => {
  if (e.reason instanceof ApiError && e.reason.status !== 401) notify(e.reason.message);
});

// On load: continue a session if the cookie is still good.
api("GET", "/v1/session").then(start, () => showSignIn());

// Offline help desk: answer a computer's request code, issue access codes, lift a lockout,
// edit the policy.
import { api, ApiError, query } from "./api.js";
import { $, $$, h, notify } from "./dom.js";

const PAGE = 500; // the most the device list answers at once
const POLICY_SWITCHES = ["challenge_response", "response_any_app", "app_codes", "admin_codes", "self_service"];

export function offlineView(ctx) {
  let devices = [];
  let loading = 0;

  const tenantPath = () => `/v1/tenants/${encodeURIComponent(ctx.tenant)}`;
  const devicePath = () => `${tenantPath()}/devices/${encodeURIComponent($("#device").value)}`;

  async function load() {
    const needsTenant = !ctx.tenant;
    $("#offline-needs-tenant").hidden = !needsTenant;
    $("#offline-tools").hidden = needsTenant;
    if (needsTenant) return;
    const ticket = ++loading;
    const listed = await allDevices(`${tenantPath()}/devices`, () => ticket !== loading);
    if (ticket !== loading) return; // the customer changed, or a newer load answered first
    devices = listed.filter((d) => !d.revoked); // open offline requests come first
    renderDevices();
    await loadPolicy();
  }

  // Every page of the device list, in its order: the search below looks at all computers.
  async function allDevices(path, stale) {
    const found = [];
    let cursor = null;
    do {
      const page = await api("GET", path + query({ limit: PAGE, cursor }));
      if (stale()) return found;
      found.push(...page.items);
      cursor = page.next_cursor || null;
    } while (cursor);
    return found;
  }

  // Hostname matches rank before id-only matches ("a2" is a hostname, and also inside many hex ids).
  function rank(d, term) {
    const host = d.hostname.toLowerCase();
    if (host === term) return 0;
    if (host.startsWith(term)) return 1;
    if (host.includes(term)) return 2;
    return d.id.toLowerCase().includes(term) ? 3 : -1;
  }

  function renderDevices(event) {
    const term = $("#device-search").value.trim().toLowerCase();
    const shown = term
      ? devices
          .map((d, i) => ({ d, i, r: rank(d, term) }))
          .filter((x) => x.r >= 0)
          .sort((a, b) => a.r - b.r || a.i - b.i)
          .map((x) => x.d)
      : devices;
    const select = $("#device");
    const chosen = event && shown.length ? shown[0].id : select.value; // typing picks the best match
    select.replaceChildren(
      ...shown.map((d) =>
        h("option", { value: d.id }, d.offline_open ? `${d.hostname} (request open)` : d.hostname),
      ),
    );
    if (shown.some((d) => d.id === chosen)) select.value = chosen;
    if (shown.length === 0) select.append(h("option", { value: "", disabled: true }, "No computer matches"));
  }

  async function loadPolicy() {
    try {
      const policy = await api("GET", `${tenantPath()}/offline-policy`);
      for (const key of POLICY_SWITCHES) $(`#p-${key}`).checked = Boolean(policy[key]);
      $("#p-max_admin_minutes").value = policy.max_admin_minutes;
      $("#policy-form").hidden = false;
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 403) throw err;
      $("#policy-form").hidden = true; // not this role's to see
    }
  }

  function grantKind() {
    return $("input[name=grant]:checked").value;
  }

  function showGrantFields() {
    const kind = grantKind();
    for (const el of $$("[data-grant]")) el.hidden = el.dataset.grant !== kind;
  }

  $("#device-search").addEventListener("input", renderDevices);
  for (const radio of $$("input[name=grant]")) radio.addEventListener("change", showGrantFields);

  $("#response-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("#response-result").hidden = true;
    const body = { request_code: $("#request-code").value.replace(/\s/g, ""), grant: grantKind() };
    if (body.grant === "app") {
      const sha = $("#grant-sha256").value.trim().toLowerCase();
      if (sha) body.sha256 = sha;
    } else {
      body.minutes = Number($("#grant-minutes").value);
    }
    const answer = await api("POST", `${devicePath()}/offline-response`, body);
    $("#response-code").textContent = answer.response_code;
    $("#response-result").hidden = false;
    $("#response-code").focus?.();
  });

  $("#codes-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const purpose = $("#codes-purpose").value;
    const body = { purpose, count: Number($("#codes-count").value) || 1 };
    const sha = $("#codes-sha256").value.trim().toLowerCase();
    if (purpose === "app" && sha) body.sha256 = sha;
    if (purpose === "admin") body.minutes = Number($("#codes-minutes").value);
    const answer = await api("POST", `${devicePath()}/offline-codes`, body);
    const list = $("#codes-result");
    list.replaceChildren(
      ...answer.codes.map((c) => h("li", {}, c.code, h("span", { class: "muted" }, `  valid until ${new Date(c.expires_at).toLocaleDateString()}`))),
    );
    list.hidden = false;
  });

  $("#lockout-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const reason = $("#lockout-reason").value.trim();
    await api("POST", `${devicePath()}/lockout-lift`, reason ? { reason } : {});
    $("#lockout-reason").value = "";
    notify("Lockout lifted; the computer applies it when it is next online.", "ok");
  });

  $("#policy-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const policy = { max_admin_minutes: Number($("#p-max_admin_minutes").value) };
    for (const key of POLICY_SWITCHES) policy[key] = $(`#p-${key}`).checked;
    await api("PUT", `${tenantPath()}/offline-policy`, policy);
    notify("Offline policy saved; the customer's computers get it when they are next online.", "ok");
  });

  return {
    show: () => load(),
    tenantChanged: () => {
      $("#response-result").hidden = true;
      $("#codes-result").hidden = true;
      loading += 1; // a list still loading is the previous customer's
      devices = [];
    },
  };
}

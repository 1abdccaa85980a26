// Audit: the trail (GET /v1/audit, filtered and paged; export; verify) where the gateway has
// it, and always the live activity from the event stream.
import { api, ApiError, query } from "./api.js";
import { $, h, when } from "./dom.js";

const ACTIVITY_LIMIT = 200;

export function auditView(ctx) {
  let cursor = null;
  const activity = [];

  function filters() {
    const day = (id, end) => {
      const v = $(id).value;
      return v ? `${v}T${end ? "23:59:59" : "00:00:00"}Z` : undefined;
    };
    return {
      tenant: ctx.tenant || undefined,
      type: $("#audit-type").value.trim(),
      user: $("#audit-user").value.trim(),
      device: $("#audit-device").value.trim(),
      request: $("#audit-request").value.trim(),
      since: day("#audit-since", false),
      until: day("#audit-until", true),
    };
  }

  async function load(next = false) {
    let page;
    try {
      page = await api("GET", `/v1/audit${query({ ...filters(), cursor: next ? cursor : undefined })}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404 && /no \/v1\/audit/.test(err.message)) {
        $("#audit-trail").hidden = true;
        $("#audit-missing").hidden = false;
        return;
      }
      throw err;
    }
    $("#audit-trail").hidden = false;
    $("#audit-missing").hidden = true;
    const rows = page.items.map(row);
    const body = $("#audit-table tbody");
    if (next) body.append(...rows);
    else body.replaceChildren(...rows);
    cursor = page.next_cursor || null;
    $("#audit-more").hidden = !cursor;
    $("#audit-export").href = `/v1/audit/export${query({ tenant: ctx.tenant || undefined })}`;
  }

  function row(record) {
    const event = record.event || record;
    return h(
      "tr",
      {},
      h("td", {}, when(record.received_at || record.time || event.time)),
      h("td", {}, shortType(record.type || event.type)),
      h("td", {}, record.tenant || event.tenant || ""),
      h("td", { class: "wrap" }, record.actor ? `${record.actor.id} · ` : "", summary(event.data || record.data)),
    );
  }

  function addActivity(event, seq) {
    activity.unshift(
      h("li", {}, `#${seq} ${when(event.time)} · ${shortType(event.type)} · ${event.tenant} · `, summary(event.data)),
    );
    activity.length = Math.min(activity.length, ACTIVITY_LIMIT);
    $("#activity").replaceChildren(...activity);
  }

  $("#audit-form").addEventListener("submit", (e) => {
    e.preventDefault();
    load();
  });
  $("#audit-more").addEventListener("click", () => load(true));
  $("#audit-verify").addEventListener("click", async () => {
    const out = $("#audit-verified");
    out.textContent = "Verifying…";
    const result = await api("GET", `/v1/audit/verify${query({ tenant: ctx.tenant || undefined })}`);
    out.textContent = result.ok
      ? `Intact: ${result.records} records, head ${String(result.head).slice(0, 12)}…`
      : `Broken at ${result.first_bad}: the trail was altered.`;
  });

  return {
    show: () => load(),
    tenantChanged: () => {
      activity.length = 0;
      $("#activity").replaceChildren();
    },
    onEvent: addActivity,
  };
}

function shortType(type) {
  const parts = String(type || "").split(".");
  return parts.length >= 2 ? parts[1] : String(type || "");
}

function summary(data) {
  if (!data || typeof data !== "object") return "";
  const keys = ["user", "request_id", "device_id", "hostname", "name", "scope", "decided_by", "kind", "rule_id"];
  const parts = keys.filter((k) => data[k]).map((k) => `${k}=${data[k]}`);
  if (data.app && data.app.file_name) parts.unshift(data.app.app_name || data.app.file_name);
  return parts.join(" ");
}

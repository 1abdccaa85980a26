// Requests: the open list (one customer, or all), live; decisions; history by status.
import { api, ApiError, query } from "./api.js";
import { $, h, when, definitions, notify, debounce } from "./dom.js";

const REQUEST_EVENTS = new Set(["RequestCreated", "Approved", "Denied", "RequestExpired"]);
const SCOPES = [
  ["once", "Once for this user"],
  ["tenant", "For this customer (rule)"],
  ["global", "For all customers (rule)"],
];

export function requestsView(ctx) {
  let items = [];
  let cursor = null;
  let loading = 0;
  const dialog = $("#rule-dialog");

  function path(status, after) {
    const params = { status, cursor: after, limit: 50 };
    return ctx.tenant
      ? `/v1/tenants/${encodeURIComponent(ctx.tenant)}/requests${query(params)}`
      : `/v1/requests${query(params)}`;
  }

  async function reload() {
    if (!ctx.me || $("#view-requests").hidden) return;
    const ticket = ++loading;
    const status = $("#request-status").value;
    const page = await api("GET", path(status));
    if (ticket !== loading) return; // a newer reload answered first
    items = page.items;
    cursor = page.next_cursor || null;
    render();
  }

  async function more() {
    const page = await api("GET", path($("#request-status").value, cursor));
    items = items.concat(page.items);
    cursor = page.next_cursor || null;
    render();
  }

  function render() {
    const status = $("#request-status").value;
    const empty = $("#requests-empty");
    empty.hidden = items.length > 0;
    empty.textContent = status === "open" ? "No open requests: nobody is waiting." : "No requests to show.";
    $("#requests").replaceChildren(...items.map(card));
    $("#requests-more").hidden = !cursor;
  }

  function title(r) {
    return r.app.app_name || r.app.file_name;
  }

  function card(r) {
    const label = `${title(r)} for ${r.user}`;
    return h(
      "li",
      {},
      h(
        "article",
        { class: "card", "aria-label": label, "data-request": r.id },
        h("h2", {}, title(r), " ", h("span", { class: `badge ${r.status}` }, r.status)),
        h(
          "p",
          { class: "meta" },
          `${r.user} on ${r.hostname || r.device_id}`,
          ctx.tenant ? "" : ` · ${r.tenant}`,
          ` · ${when(r.created_at)}`,
        ),
        r.reason ? h("p", { class: "reason" }, `“${r.reason}”`) : null,
        decisionLine(r),
        h(
          "details",
          {},
          h("summary", {}, "Details"),
          definitions([
            ["File", r.app.file_name],
            ["Application", r.app.app_name],
            ["Publisher", r.app.publisher],
            ["SHA-256", r.app.sha256],
            ["Path", r.app.path],
            ["Command line", r.app.command_line],
            ["User", r.user],
            ["Computer", r.hostname ? `${r.hostname} (${r.device_id})` : r.device_id],
            ["Customer", r.tenant],
            ["Requested", when(r.created_at)],
            ["Expires", r.status === "open" ? when(r.expires_at) : ""],
            ["Request id", r.id],
          ]),
        ),
        r.status === "open" ? decideControls(r) : null,
      ),
    );
  }

  function decisionLine(r) {
    const d = r.decision;
    if (!d) return r.status === "expired" ? h("p", { class: "meta" }, "Expired undecided") : null;
    const scope = { once: "once", tenant: "for the customer", global: "for all customers" }[d.scope] || d.scope;
    return h(
      "p",
      { class: "meta" },
      `${d.decision === "approve" ? "Approved" : "Denied"} ${scope} by ${d.by}`,
      d.rule_id ? ` (rule ${d.rule_id})` : "",
      d.at ? ` · ${when(d.at)}` : "",
    );
  }

  function decideControls(r) {
    const id = `scope-${r.id}`;
    const scopes = SCOPES.filter(([s]) => s !== "global" || ctx.mayDecideGlobally);
    const select = h("select", { id }, scopes.map(([value, text]) => h("option", { value }, text)));
    const decide = (decision) => () => {
      const scope = select.value;
      if (scope === "once") submit(r, { decision, scope });
      else openRuleDialog(r, decision, scope);
    };
    return h(
      "div",
      { class: "decide", role: "group", "aria-label": `Decide: ${title(r)} for ${r.user}` },
      h("label", { for: id }, "Scope"),
      select,
      h("button", { type: "button", onclick: decide("approve") }, "Approve"),
      h("button", { type: "button", class: "danger", onclick: decide("deny") }, "Deny"),
    );
  }

  async function submit(r, body) {
    try {
      await api("POST", `/v1/requests/${encodeURIComponent(r.id)}/decision`, body);
      const verb = body.decision === "approve" ? "Approved" : "Denied";
      notify(`${verb}: ${title(r)} for ${r.user}.`, "ok");
      await reload();
      return true;
    } catch (err) {
      if (err instanceof ApiError && err.status === 409) {
        notify(`Someone else decided first: ${err.message}`, "bad");
        await reload();
        return true; // nothing more to do in a dialog
      }
      throw err;
    }
  }

  async function openRuleDialog(r, decision, scope) {
    const draft = await api("GET", `/v1/requests/${encodeURIComponent(r.id)}/rule-draft`);
    const verb = decision === "approve" ? "Approve" : "Deny";
    const where = scope === "global" ? "all customers" : "this customer";
    $("#rule-dialog-title").textContent = `${verb} for ${where}`;
    $("#rule-dialog-what").textContent =
      `A rule that ${decision === "approve" ? "allows" : "denies"} this application for ${where} from now on.`;
    $("#dialog-rule-name").value = draft.name || "";
    $("#dialog-sha256").value = draft.match.sha256 || "";
    $("#dialog-publisher").value = draft.match.publisher || "";
    $("#dialog-app-name").value = draft.match.app_name || "";
    $("#rule-dialog-error").textContent = "";
    $("#rule-dialog-confirm").textContent = `Create rule and ${decision === "approve" ? "approve" : "deny"}`;
    dialog.onsubmit = async (e) => {
      e.preventDefault();
      const rule = {
        sha256: $("#dialog-sha256").value.trim().toLowerCase() || null,
        publisher: $("#dialog-publisher").value.trim() || null,
        app_name: $("#dialog-app-name").value.trim() || null,
      };
      try {
        if (await submit(r, { decision, scope, rule_name: $("#dialog-rule-name").value.trim(), rule })) {
          dialog.close();
        }
      } catch (err) {
        $("#rule-dialog-error").textContent = err.message;
      }
    };
    dialog.showModal();
    $("#dialog-rule-name").focus();
  }

  $("#rule-dialog-cancel").addEventListener("click", () => dialog.close());
  $("#request-status").addEventListener("change", () => reload());
  $("#requests-more").addEventListener("click", () => more());
  const soon = debounce(() => reload(), 150);

  return {
    reload,
    show: () => reload(),
    tenantChanged: () => {
      items = [];
      render();
    },
    onEvent(event) {
      const name = String(event.type || "").split(".")[1];
      if (REQUEST_EVENTS.has(name)) soon();
    },
  };
}

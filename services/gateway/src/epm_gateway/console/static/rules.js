// Rules: the chosen customer's and, for the MSP, the global ones; create; disable.
import { api } from "./api.js";
import { $, h, notify } from "./dom.js";

const MATCH_FIELDS = ["sha256", "publisher", "app_name", "file_name", "path"];

export function rulesView(ctx) {
  async function load() {
    const lists = [];
    if (ctx.tenant) {
      lists.push([`Rules of ${ctx.tenant}`, `/v1/tenants/${encodeURIComponent(ctx.tenant)}/rules`]);
    }
    if (ctx.isMsp) lists.push(["Rules for all customers", "/v1/rules"]);
    const sections = [];
    for (const [heading, path] of lists) {
      const page = await api("GET", path);
      sections.push(table(heading, page.items));
    }
    $("#rules-lists").replaceChildren(...sections);
    const scope = $("#rule-scope");
    const options = [];
    if (ctx.tenant) options.push(h("option", { value: "tenant" }, `This customer (${ctx.tenant})`));
    if (ctx.isMsp) options.push(h("option", { value: "global" }, "All customers"));
    scope.replaceChildren(...options);
  }

  function table(heading, rules) {
    const id = `rules-${heading.replace(/\W+/g, "-").toLowerCase()}`;
    return h(
      "section",
      { "aria-labelledby": id },
      h("h2", { id }, heading),
      rules.length === 0
        ? h("p", { class: "muted" }, "No rules yet.")
        : h(
            "div",
            { class: "scroll" },
            h(
              "table",
              { "aria-labelledby": id },
              h("thead", {}, h("tr", {}, ["Name", "Effect", "Matches", "State", ""].map((c) => h("th", {}, c)))),
              h("tbody", {}, rules.map(row)),
            ),
          ),
    );
  }

  function row(rule) {
    const matches = MATCH_FIELDS.filter((k) => rule.match[k]).map((k) => `${k}=${rule.match[k]}`);
    return h(
      "tr",
      {},
      h("td", {}, rule.name),
      h("td", {}, rule.effect),
      h("td", { class: "wrap" }, matches.join(" ")),
      h("td", {}, rule.enabled ? "enabled" : "disabled"),
      h(
        "td",
        {},
        rule.enabled
          ? h("button", { type: "button", class: "secondary", "aria-label": `Disable ${rule.name}`,
              onclick: () => disable(rule) }, "Disable")
          : null,
      ),
    );
  }

  async function disable(rule) {
    await api("DELETE", `/v1/rules/${encodeURIComponent(rule.id)}`);
    notify(`Rule “${rule.name}” disabled.`, "ok");
    await load();
  }

  $("#rule-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const match = {};
    for (const [field, input] of [
      ["sha256", "#rule-sha256"], ["publisher", "#rule-publisher"], ["app_name", "#rule-app-name"],
      ["file_name", "#rule-file-name"], ["path", "#rule-path"],
    ]) {
      const value = $(input).value.trim();
      if (value) match[field] = field === "sha256" ? value.toLowerCase() : value;
    }
    const body = { name: $("#rule-name").value.trim(), effect: $("#rule-effect").value, match };
    const global = $("#rule-scope").value === "global";
    const path = global ? "/v1/rules" : `/v1/tenants/${encodeURIComponent(ctx.tenant)}/rules`;
    await api("POST", path, body);
    notify(`Rule “${body.name}” created.`, "ok");
    e.target.reset();
    await load();
  });

  return { show: () => load(), tenantChanged: () => {} };
}

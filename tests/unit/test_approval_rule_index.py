"""The rule index gives exactly the verdict of evaluating every rule one by one."""

from __future__ import annotations

import fnmatch

from epm_approval.rules import FIELDS, Rule, RuleIndex
from epm_events.catalog import AppInfo, RuleMatch
from epm_events.ids import GLOBAL_TENANT
from hypothesis import given, settings
from hypothesis import strategies as st

TENANTS = ("acme", "globex", GLOBAL_TENANT)
WORDS = ("setup", "Setup", "tool", "c:\\apps\\", "contoso", "x")
SHAS = ("a" * 64, "b" * 64)


def _app(file_name: str, sha: str, publisher: str, app_name: str, path: str) -> AppInfo:
    return AppInfo(
        file_name=file_name, sha256=sha, publisher=publisher, app_name=app_name, path=path
    )


texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map("".join)
patterns = st.lists(st.sampled_from((*WORDS, "*", "?")), min_size=1, max_size=4).map("".join)
apps = st.builds(_app, texts, st.sampled_from(SHAS), texts, texts, texts)


@st.composite
def rules(draw: st.DrawFn) -> list[Rule]:
    out = []
    for i in range(draw(st.integers(0, 12))):
        fields = draw(st.sets(st.sampled_from(FIELDS), min_size=1, max_size=3))
        match = {
            f: draw(st.sampled_from(SHAS)) if f == "sha256" else draw(patterns) for f in fields
        }
        out.append(
            Rule(
                id=f"r{i}",
                name=f"r{i}",
                tenant=draw(st.sampled_from(TENANTS)),
                effect=draw(st.sampled_from(("allow", "deny"))),
                match=RuleMatch(**match),
                enabled=draw(st.booleans()),
            )
        )
    return out


def scan(rules: list[Rule], tenant: str, app: AppInfo) -> str | None:
    """The specification: every enabled rule of the tenant or global, deny beats allow."""
    effects = set()
    for r in rules:
        if not r.enabled or r.tenant not in (tenant, GLOBAL_TENANT):
            continue
        wanted = {f: getattr(r.match, f) for f in FIELDS if getattr(r.match, f)}
        if all(
            fnmatch.fnmatchcase(getattr(app, f).casefold(), v.casefold()) for f, v in wanted.items()
        ):
            effects.add(r.effect)
    return "deny" if "deny" in effects else ("allow" if effects else None)


@settings(max_examples=300, deadline=None)
@given(rules(), st.sampled_from(TENANTS[:2]), apps, st.data())
def test_index_agrees_with_evaluating_every_rule(
    all_rules: list[Rule], tenant: str, app: AppInfo, data: st.DataObject
) -> None:
    index = RuleIndex()
    for r in all_rules:
        index.add(r)
    # Removing and re-adding some rules must leave no trace in the buckets.
    for r in data.draw(st.lists(st.sampled_from(all_rules), max_size=3)) if all_rules else []:
        index.remove(r.id)
        index.add(r)
    verdict = index.evaluate(tenant, app)
    assert (verdict.effect if verdict else None) == scan(all_rules, tenant, app)


def test_wildcard_only_rules_are_found_by_prefix_and_by_suffix() -> None:
    index = RuleIndex()
    index.add(Rule("p", "p", "acme", "allow", RuleMatch(path="C:\\Program Files\\Contoso\\*")))
    index.add(Rule("s", "s", "acme", "deny", RuleMatch(file_name="*-uninstall.exe")))
    app = _app("x.exe", SHAS[0], "", "", "c:\\program files\\contoso\\x.exe")
    verdict = index.evaluate("acme", app)
    assert verdict is not None and verdict.rule.id == "p"
    denied = index.evaluate("acme", app.model_copy(update={"file_name": "App-Uninstall.exe"}))
    assert denied is not None and denied.rule.id == "s"
    index.remove("p")
    assert index.evaluate("acme", app) is None and len(index) == 1


def test_a_popular_rule_in_many_tenants_costs_a_request_one_candidate() -> None:
    index = RuleIndex()
    for i in range(1000):
        index.add(Rule(f"r{i}", "ms", f"t{i}", "allow", RuleMatch(publisher="Microsoft")))
    app = _app("x.exe", SHAS[0], "Microsoft", "", "")
    values = {f: getattr(app, f).casefold() for f in FIELDS}
    assert len(list(index._candidates("t7", values))) == 1
    verdict = index.evaluate("t7", app)
    assert verdict is not None and verdict.rule.id == "r7"

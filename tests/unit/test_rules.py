from __future__ import annotations

import dataclasses

import pytest
from epm_approval.rules import EmptyRule, Rule, RuleIndex, draft_from_request
from epm_events.catalog import AppInfo, RuleMatch
from epm_events.ids import GLOBAL_TENANT

SHA_A = "a" * 64
SHA_B = "b" * 64


def app(**kw: str) -> AppInfo:
    base = dict(
        file_name="setup.exe",
        sha256=SHA_A,
        publisher="Contoso Ltd",
        app_name="Contoso Setup",
        path=r"C:\Users\bob\Downloads\setup.exe",
    )
    base.update(kw)
    return AppInfo(**base)


def rule(id: str, effect: str = "allow", tenant: str = "acme", **match: str) -> Rule:
    return Rule(id=id, name=id, tenant=tenant, effect=effect, match=RuleMatch(**match))


def test_no_rule_means_no_verdict() -> None:
    assert RuleIndex().evaluate("acme", app()) is None


def test_tenant_rule_matches_on_sha256() -> None:
    idx = RuleIndex()
    idx.add(rule("r1", sha256=SHA_A))
    v = idx.evaluate("acme", app())
    assert v is not None and v.effect == "allow" and v.rule.id == "r1"


def test_tenant_rule_does_not_apply_to_another_tenant() -> None:
    idx = RuleIndex()
    idx.add(rule("r1", sha256=SHA_A))
    assert idx.evaluate("globex", app()) is None


def test_global_rule_applies_to_every_tenant() -> None:
    idx = RuleIndex()
    idx.add(rule("g1", tenant=GLOBAL_TENANT, publisher="contoso ltd"))
    assert idx.evaluate("globex", app()) is not None
    assert idx.evaluate("acme", app()) is not None


def test_deny_beats_allow_across_tenant_and_global() -> None:
    idx = RuleIndex()
    idx.add(rule("allow-tenant", sha256=SHA_A))
    idx.add(rule("deny-global", effect="deny", tenant=GLOBAL_TENANT, app_name="Contoso*"))
    v = idx.evaluate("acme", app())
    assert v is not None and v.effect == "deny" and v.rule.id == "deny-global"


def test_every_field_of_a_rule_must_match() -> None:
    idx = RuleIndex()
    idx.add(rule("r1", sha256=SHA_A, publisher="Other Corp"))
    assert idx.evaluate("acme", app()) is None


def test_path_wildcards_are_case_insensitive() -> None:
    idx = RuleIndex()
    idx.add(rule("r1", path=r"c:\users\*\downloads\*.exe"))
    assert idx.evaluate("acme", app()) is not None
    assert idx.evaluate("acme", app(path=r"C:\Windows\setup.exe")) is None


def test_question_mark_matches_one_character() -> None:
    idx = RuleIndex()
    idx.add(rule("r1", file_name="setup?.exe"))
    assert idx.evaluate("acme", app(file_name="setup2.exe")) is not None
    assert idx.evaluate("acme", app(file_name="setup.exe")) is None


def test_disabled_rule_no_longer_matches() -> None:
    idx = RuleIndex()
    r = rule("r1", sha256=SHA_A)
    idx.add(r)
    idx.add(dataclasses.replace(r, enabled=False))
    assert idx.evaluate("acme", app()) is None
    assert len(idx) == 0


def test_removed_rule_no_longer_matches() -> None:
    idx = RuleIndex()
    idx.add(rule("r1", app_name="*setup*"))
    idx.remove("r1")
    assert idx.evaluate("acme", app()) is None


def test_a_rule_with_no_field_is_refused() -> None:
    with pytest.raises(EmptyRule):
        RuleIndex().add(rule("r1"))


def test_many_rules_only_the_matching_one_answers() -> None:
    idx = RuleIndex()
    for i in range(5000):
        idx.add(rule(f"r{i}", sha256=f"{i:064x}"))
    idx.add(rule("hit", effect="deny", sha256=SHA_B))
    v = idx.evaluate("acme", app(sha256=SHA_B))
    assert v is not None and v.rule.id == "hit"


def test_draft_uses_sha_publisher_and_app_name_not_the_path() -> None:
    d = draft_from_request(app())
    assert d.sha256 == SHA_A and d.publisher == "Contoso Ltd" and d.app_name == "Contoso Setup"
    assert d.path is None and d.file_name is None


def test_only_star_and_question_mark_are_wildcards_brackets_match_themselves() -> None:
    index = RuleIndex()
    index.add(rule("r1", "allow", path="C:\\Apps [x86]\\tool.exe"))
    assert index.evaluate("acme", app(path="C:\\Apps [x86]\\tool.exe")) is not None
    assert index.evaluate("acme", app(path="C:\\Apps x\\tool.exe")) is None


def test_a_wildcard_does_not_match_an_attribute_the_application_lacks() -> None:
    index = RuleIndex()
    index.add(rule("r1", "allow", publisher="*", file_name="setup.exe"))
    assert index.evaluate("acme", app(file_name="setup.exe", publisher="Contoso")) is not None
    assert index.evaluate("acme", app(file_name="setup.exe", publisher="")) is None  # unsigned

"""Rule evaluation: tenant and global rules together, deny beats allow, indexed.

A rule matches when every field it sets matches the request's application
(``*`` and ``?`` wildcards, case-insensitive, as Windows names are). To stay
fast with 100,000 rules, each rule is filed under ONE exact (wildcard-free)
field value, the most selective it has, or, with wildcards in every field,
under the longest literal prefix or suffix of a pattern; a request then looks
up only the buckets its own values name, plus the (rare) rules with no literal
part to file them under. Pure: no I/O, tested with nothing but Python.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from epm_events.catalog import AppInfo, RuleMatch
from epm_events.ids import GLOBAL_TENANT

# Most selective first: a SHA-256 names one binary, a path one place.
FIELDS: tuple[str, ...] = ("sha256", "file_name", "app_name", "publisher", "path")
_WILDCARD = re.compile(r"[*?]")
"""Only ``*`` and ``?`` are wildcards; every other character matches itself (a path such as
``C:\\Apps [x86]\\tool.exe`` means what it says, unlike fnmatch's ``[...]`` classes)."""


def has_literal(value: str | None) -> bool:
    """Whether a rule field asks for something: a value with a character besides wildcards."""
    return bool(value) and _WILDCARD.sub("", value or "") != ""


def _translate(pattern: str) -> re.Pattern[str]:
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.DOTALL)


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    name: str
    tenant: str  # GLOBAL_TENANT for rules of all customers
    effect: str  # "allow" | "deny"
    match: RuleMatch
    enabled: bool = True

    @property
    def scope(self) -> str:
        return "global" if self.tenant == GLOBAL_TENANT else "tenant"


@dataclass(frozen=True, slots=True)
class Verdict:
    effect: str
    rule: Rule


def _norm(value: str) -> str:
    return value.casefold()


@dataclass(slots=True)
class _Compiled:
    rule: Rule
    exact: tuple[tuple[str, str], ...]
    patterns: tuple[tuple[str, re.Pattern[str]], ...]

    def matches(self, values: dict[str, str]) -> bool:
        for name, want in self.exact:
            if values[name] != want:
                return False
        # a pattern asks for a value: an application without one (an unsigned binary has no
        # publisher) is not matched by "*"
        return all(
            values[name] != "" and pattern.fullmatch(values[name]) is not None
            for name, pattern in self.patterns
        )


def _compile(rule: Rule) -> _Compiled:
    exact: list[tuple[str, str]] = []
    patterns: list[tuple[str, re.Pattern[str]]] = []
    for name in FIELDS:
        value = getattr(rule.match, name)
        if value is None or value == "":
            continue
        value = _norm(value)
        if _WILDCARD.search(value):
            patterns.append((name, _translate(value)))
        else:
            exact.append((name, value))
    return _Compiled(rule, tuple(exact), tuple(patterns))


class EmptyRule(ValueError):
    pass


def _literal_prefix(pattern: str) -> str:
    m = _WILDCARD.search(pattern)
    return pattern[: m.start()] if m else pattern


def _literal_suffix(pattern: str) -> str:
    cut = max(pattern.rfind(ch) for ch in "*?")
    return pattern[cut + 1 :]


# Where a rule is filed: kind ("exact" | "prefix" | "suffix" | "wild"), field, literal.
_Place = tuple[str, str, str]
# A bucket: the rules of ONE tenant (or of _global) under one literal.
_Key = tuple[str, str]


@dataclass
class RuleIndex:
    """All enabled rules of every tenant, indexed for ``evaluate``.

    Buckets are per tenant, so a popular application allowed by a thousand
    tenants costs a request one candidate, not a thousand. A rule with an
    exact field is filed under that value. A rule with wildcards only is filed
    under the longest literal prefix or suffix of one of its patterns
    (``C:\\Program Files\\Contoso\\*`` under its prefix, ``*\\setup.exe`` under its
    suffix); a request looks up its own values' prefixes and suffixes of the
    lengths in use. Only rules such as ``*contoso*`` are left to a per-tenant
    list that every request of the tenant walks.
    """

    _exact: dict[str, dict[_Key, list[_Compiled]]] = field(default_factory=dict)
    _prefix: dict[str, dict[_Key, list[_Compiled]]] = field(default_factory=dict)
    _suffix: dict[str, dict[_Key, list[_Compiled]]] = field(default_factory=dict)
    # field -> {literal length in use: number of rules}; lookups try only these lengths
    _prefix_lengths: dict[str, Counter[int]] = field(default_factory=dict)
    _suffix_lengths: dict[str, Counter[int]] = field(default_factory=dict)
    _wild: dict[str, list[_Compiled]] = field(default_factory=dict)  # per tenant
    _where: dict[str, _Place] = field(default_factory=dict)
    _compiled: dict[str, _Compiled] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._compiled)

    def add(self, rule: Rule) -> None:
        if not any(getattr(rule.match, f) for f in FIELDS):
            raise EmptyRule("a rule must set at least one of: " + ", ".join(FIELDS))
        self.remove(rule.id)
        if not rule.enabled:
            return
        c = _compile(rule)
        place = _place(c)
        self._compiled[rule.id] = c
        self._where[rule.id] = place
        kind, name, literal = place
        if kind == "wild":
            self._wild.setdefault(rule.tenant, []).append(c)
            return
        table = self._tables[kind].setdefault(name, {})
        table.setdefault((rule.tenant, literal), []).append(c)
        lengths = self._lengths.get(kind)
        if lengths is not None:
            lengths.setdefault(name, Counter())[len(literal)] += 1

    def remove(self, rule_id: str) -> None:
        c = self._compiled.pop(rule_id, None)
        if c is None:
            return
        kind, name, literal = self._where.pop(rule_id)
        tenant = c.rule.tenant
        if kind == "wild":
            self._wild[tenant].remove(c)
            return
        table = self._tables[kind][name]
        bucket = table[(tenant, literal)]
        bucket.remove(c)
        if not bucket:
            del table[(tenant, literal)]
        lengths = self._lengths.get(kind)
        if lengths is not None:
            lengths[name][len(literal)] -= 1
            if not lengths[name][len(literal)]:
                del lengths[name][len(literal)]

    def evaluate(self, tenant: str, app: AppInfo) -> Verdict | None:
        """The verdict of the tenant's and the global rules; a deny beats any allow."""
        values = {name: _norm(getattr(app, name)) for name in FIELDS}
        allow: Rule | None = None
        for c in self._candidates(tenant, values):
            if not c.matches(values):
                continue
            if c.rule.effect == "deny":
                return Verdict("deny", c.rule)
            if allow is None:
                allow = c.rule
        return Verdict("allow", allow) if allow is not None else None

    @property
    def _tables(self) -> dict[str, dict[str, dict[_Key, list[_Compiled]]]]:
        return {"exact": self._exact, "prefix": self._prefix, "suffix": self._suffix}

    @property
    def _lengths(self) -> dict[str, dict[str, Counter[int]]]:
        return {"prefix": self._prefix_lengths, "suffix": self._suffix_lengths}

    def _candidates(self, tenant: str, values: dict[str, str]) -> Iterable[_Compiled]:
        tenants = (tenant,) if tenant == GLOBAL_TENANT else (tenant, GLOBAL_TENANT)
        for name, table in self._exact.items():
            value = values[name]
            for t in tenants:
                yield from table.get((t, value), ())
        for name, lengths in self._prefix_lengths.items():
            value, table = values[name], self._prefix[name]
            for n in lengths:
                if n <= len(value):
                    for t in tenants:
                        yield from table.get((t, value[:n]), ())
        for name, lengths in self._suffix_lengths.items():
            value, table = values[name], self._suffix[name]
            for n in lengths:
                if n <= len(value):
                    for t in tenants:
                        yield from table.get((t, value[-n:]), ())
        for t in tenants:
            yield from self._wild.get(t, ())


def _place(c: _Compiled) -> _Place:
    """Where to file a rule: its most selective exact value, else its longest literal part."""
    if c.exact:
        name, value = c.exact[0]
        return ("exact", name, value)
    best: _Place = ("wild", "", "")
    for name, _ in c.patterns:
        pattern = _norm(getattr(c.rule.match, name))
        for kind, literal in (
            ("prefix", _literal_prefix(pattern)),
            ("suffix", _literal_suffix(pattern)),
        ):
            if len(literal) > len(best[2]):
                best = (kind, name, literal)
    return best


def draft_from_request(app: AppInfo) -> RuleMatch:
    """The rule pre-filled from a request: SHA-256, publisher, app name; never the user's path."""
    return RuleMatch(
        sha256=app.sha256,
        publisher=app.publisher or None,
        app_name=app.app_name or None,
    )

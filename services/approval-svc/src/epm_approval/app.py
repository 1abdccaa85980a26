"""approval-svc: rules, decisions, one-time grants (offline policy, keys and codes to come).

Subscriptions (projections of EPM_EVENTS, each its own SQLite file):
- tenants (TenantDirectory): TenantCreated -> tenants
- approval (epm_approval.view.ApprovalView):
  RequestCreated, Approved, Denied, RequestExpired -> requests (state + last sequence)
  RuleCreated, RuleDisabled                         -> rules (and, after commit, the RuleIndex)
  Approved with grant_id, GrantConsumed             -> grants

Commands (``epm.rpc.approval-svc.<command>``, docs/internal-contracts.md):
- auto_decide   request-svc, right after RequestCreated: one-time grant, else rules, else open
- decide        a technician's approve/deny, once | tenant | global (409 once decided/expired)
- rule_draft    a rule pre-filled from a request
- list_rules    a tenant's rules, or the global ones
- create_rule   a tenant or global rule
- disable_rule  RuleDisabled (history kept)

Events appended: Approved, Denied (request), GrantConsumed (grant), RuleCreated,
RuleDisabled (rule), each with the aggregate's last sequence as expectation.
"""

from __future__ import annotations

from collections.abc import Mapping

from epm_service.rpc import CommandHandler
from epm_service.runtime import ServiceContext, ServiceDefinition, main
from epm_service.tenants import TenantDirectory

from epm_approval.context import Approval
from epm_approval.decisions import Decisions
from epm_approval.rule_admin import RuleAdmin
from epm_approval.view import ApprovalView

NAME = "approval-svc"


def commands(ctx: ServiceContext) -> Mapping[str, CommandHandler]:
    approval = Approval.of(ctx)
    decisions = Decisions(approval)
    rules = RuleAdmin(approval)
    return {
        "auto_decide": decisions.auto_decide,
        "decide": decisions.decide,
        "rule_draft": decisions.rule_draft,
        "list_rules": rules.list_rules,
        "create_rule": rules.create_rule,
        "disable_rule": rules.disable_rule,
    }


async def on_start(ctx: ServiceContext) -> None:
    """Load the rule index once the projection has caught up with the stream."""
    approval = Approval.of(ctx)
    await approval.view.wait_caught_up()
    await approval.rules.sync()


DEFINITION = ServiceDefinition(
    name=NAME,
    projections=[lambda ctx: TenantDirectory(), lambda ctx: ApprovalView()],
    commands=commands,
    on_start=on_start,
)


def run() -> None:
    main(DEFINITION)

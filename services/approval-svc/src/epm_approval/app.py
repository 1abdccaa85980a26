"""approval-svc: rules, decisions, one-time grants, offline policy, keys and codes.

Subscriptions (projections of EPM_EVENTS, each its own SQLite file):
- tenants (TenantDirectory): TenantCreated -> tenants
- approval (epm_approval.view.ApprovalView):
  RequestCreated, Approved, Denied, RequestExpired -> requests (state + last sequence)
  RuleCreated, RuleDisabled                         -> rules (and, after commit, the RuleIndex)
  Approved with grant_id, GrantConsumed             -> grants
  a technician's tenant/global Approved/Denied      -> rules_owed, until its RuleCreated
                                                       (epm_approval.owed_rules creates
                                                       a rule still owed after 30 s)
- offline (epm_approval.offline_view.OfflineView), with an outbox to EPM_DEVICE:
  TenantKeyCreated                                  -> tenant_keys (ciphertext only)
  OfflinePolicyChanged                              -> policies; ``policy`` to each device
  DeviceEnrolled, DeviceRevoked                     -> devices (public keys, key state)
  DeviceKeyRotated                                  -> devices; sealed ``key`` to the device
  OfflineCodeIssued, OfflineResponseIssued          -> devices (next counter), codes
  OfflineLockoutLifted                              -> devices; ``lockout`` lift to the device
  AdminSessionStarted                               -> a key rotation owed (OwedRotations)

Reactions (to new events the approval view receives, once it has caught up):
- RequestCreated  a one-time grant, else rules: Approved/Denied at once; else
                  ``UNDECIDED_NOTICE`` to request-svc (epm_request.answers), which answers
                  the agent on the same round trip either way

Commands (``epm.rpc.approval-svc.<command>``, docs/internal-contracts.md):
- decide        a technician's approve/deny, once | tenant | global (409 once decided/expired)
- rule_draft    a rule pre-filled from a request
- use_approval  request-svc's intake: a device used its request's once-approval as it
                arrived, so the grant it issued is consumed by that request (GrantConsumed)
- list_rules    a tenant's rules, or the global ones
- create_rule   a tenant or global rule
- disable_rule  RuleDisabled (history kept)
- get_policy, set_policy      a tenant's offline policy (OfflinePolicyChanged)
- device_key_material         request-svc at enrollment: key material sealed to the device
- offline_response            a help-desk response code (OfflineResponseIssued)
- offline_codes               offline access codes (OfflineCodeIssued, hashes only)
- rotate_device_key           DeviceKeyRotated: every older code stops working
- revoke_device_codes         the same, recorded as "codes revoked"
- lift_lockout                OfflineLockoutLifted: the device's offline-code lockout ends

Device commands (``epm.devrpc.<tenant>.<device>.<command>``, signed by the device,
epm_approval.device_commands):
- self_generate_code          the agent's ``offline generate`` (policy self_service)

Events appended: Approved, Denied (request), GrantConsumed (grant), RuleCreated,
RuleDisabled (rule), OfflinePolicyChanged (policy), TenantKeyCreated (tenantkey),
DeviceKeyRotated, OfflineCodeIssued, OfflineResponseIssued, OfflineLockoutLifted
(devicekey), each with the aggregate's last sequence as expectation.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from epm_events.catalog import Event, RequestCreated
from epm_service.outbox import OutboxRelay
from epm_service.projection import StoredMsg
from epm_service.rpc import CommandHandler
from epm_service.runtime import ServiceContext, ServiceDefinition, main
from epm_service.tenants import TenantDirectory

from epm_approval.context import Approval
from epm_approval.decisions import Deciding, Decisions
from epm_approval.device_commands import DeviceCommandServer
from epm_approval.offline_commands import Offline, OfflineCommands
from epm_approval.offline_view import OfflineView
from epm_approval.owed_rotations import OwedRotations
from epm_approval.owed_rules import OwedRules
from epm_approval.rule_admin import RuleAdmin
from epm_approval.tenant_keys import TenantKeyring
from epm_approval.view import ApprovalView

NAME = "approval-svc"


def commands(ctx: ServiceContext) -> Mapping[str, CommandHandler]:
    approval = Approval.of(ctx)
    decisions = Decisions(approval)
    rules = RuleAdmin(approval)
    offline = OfflineCommands(offline_of(ctx))
    return {
        "decide": decisions.decide,
        "rule_draft": decisions.rule_draft,
        "use_approval": decisions.use_approval,
        "list_rules": rules.list_rules,
        "create_rule": rules.create_rule,
        "disable_rule": rules.disable_rule,
        "get_policy": offline.get_policy,
        "set_policy": offline.set_policy,
        "device_key_material": offline.device_key_material,
        "offline_response": offline.offline_response,
        "offline_codes": offline.offline_codes,
        "rotate_device_key": offline.rotate_device_key,
        "revoke_device_codes": offline.revoke_device_codes,
        "lift_lockout": offline.lift_lockout,
    }


def reactions(
    ctx: ServiceContext,
) -> Mapping[type[Event], Callable[[StoredMsg], Coroutine[Any, Any, None]]]:
    """What approval-svc does when its view receives a new event of these types."""
    decisions = Decisions(Approval.of(ctx))
    return {RequestCreated: decisions.on_request_created}


def offline_of(ctx: ServiceContext) -> Offline:
    view = ctx.projector(OfflineView.name)
    assert isinstance(view.projection, OfflineView)
    return Offline.of(ctx, view.projection.keyring)


async def on_start(ctx: ServiceContext) -> None:
    """Load the rule index once the projection has caught up with the stream; start sending
    the offline outbox to devices and serving device commands."""
    approval = Approval.of(ctx)
    await approval.view.wait_caught_up()
    await approval.rules.sync()
    for event_type, react in reactions(ctx).items():
        approval.view.react([event_type.NAME], react)
    await ctx.start_worker(Deciding(ctx.bus.nc))  # request-svc knows a replica reacts
    await ctx.start_worker(OwedRules(approval))
    offline_view = ctx.projector(OfflineView.name)
    await offline_view.wait_caught_up()
    await ctx.start_worker(OutboxRelay(ctx.bus.js, offline_view))
    offline = OfflineCommands(offline_of(ctx))
    await ctx.start_worker(DeviceCommandServer(ctx.bus.nc, offline, queue=NAME))
    await ctx.start_worker(OwedRotations(offline))


DEFINITION = ServiceDefinition(
    name=NAME,
    projections=[
        lambda ctx: TenantDirectory(),
        lambda ctx: ApprovalView(),
        lambda ctx: OfflineView(
            TenantKeyring(ctx.settings.master_key, ctx.settings.previous_master_keys)
        ),
    ],
    commands=commands,
    on_start=on_start,
)


def run() -> None:
    main(DEFINITION)

"""request-svc: enrollment tokens, devices, agent intake, request lifecycle and expiry.

Where things go (the handler table of this service):

- projection ``store`` (epm_request.store.RequestStore), from EPM_EVENTS, in a process of
  its own (epm_service.projection_process; the service reads its file):
  TenantCreated, EnrollmentTokenCreated, EnrollmentTokenUsed, DeviceEnrolled,
  DeviceRevoked, RequestCreated, Approved, Denied, RequestExpired, the offline
  records (device_log), OfflineCodeIssued (issued_codes), TokenIssued and
  TokenRevoked (tokens: whose NATS user to revoke); decisions
  are queued to devices (outbox -> EPM_DEVICE ``epm.device.<t>.<d>.decision``).
- intake (epm_request.intake.AgentIntake), from EPM_AGENT:
  ``ElevationRequested`` -> RequestCreated, then the answer on the agent's
  ``Epm-Reply-To``: approval-svc's decision at once as EPM_EVENTS stores it, or ``open``
  on its ``UNDECIDED_NOTICE`` (epm_request.answers); ``OfflineLogBatch`` -> OfflineCodeRedeemed,
  ElevationPerformed, AdminSessionStarted, AdminSessionEnded on the device aggregate
  (epm_request.replay, exactly once per (device, seq); gaps, forks, tampering and code
  reuse -> SecurityAlertRaised), then a ReplayAck on ``epm.device.<t>.<d>.replay``;
  ``ApprovalUsed`` -> approval-svc's ``use_approval`` (GrantConsumed: a once-approval the
  waiting user used spends its grant); refused input -> SecurityAlertRaised or EPM_DLQ.
- expiry (epm_request.expiry.ExpiryScheduler): open requests past
  ``EPM_REQUEST_TTL`` -> RequestExpired.
- NATS revocations (epm_request.nats_credentials.DeviceCredentials): revoked
  devices' and integrator tokens' NATS users -> the account JWT on the resolver
  (``EPM_NATS_ISSUER``).
- commands ``epm.rpc.request-svc.*`` (epm_request.commands.RequestCommands):
  create_enrollment_token, enroll, list_devices, revoke_device,
  revoke_integrator_nats, list_requests, get_request.
"""

from __future__ import annotations

from epm_service.projection_process import OwnProcess
from epm_service.runtime import ServiceContext, ServiceDefinition, main

from epm_request.commands import RequestCommands
from epm_request.expiry import ExpiryScheduler
from epm_request.intake import AgentIntake
from epm_request.nats_credentials import DeviceCredentials
from epm_request.store import RequestStore

NAME = "request-svc"


async def start_workers(ctx: ServiceContext) -> None:
    await ctx.start_worker(AgentIntake(ctx))
    await ctx.start_worker(ExpiryScheduler(ctx))
    await ctx.start_worker(
        DeviceCredentials(ctx.settings, ctx.projection_process(RequestStore.name))
    )


DEFINITION = ServiceDefinition(
    name=NAME,
    # Written in a process of its own (it also relays the decisions to devices): the event
    # loop every online answer waits for carries the intake and the answers alone.
    own_processes=[OwnProcess(RequestStore, relay_outbox=True)],
    commands=lambda ctx: RequestCommands(ctx).table(),
    on_start=start_workers,
)


def run() -> None:
    main(DEFINITION)

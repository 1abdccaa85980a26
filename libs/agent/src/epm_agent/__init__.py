"""epm_agent: the reference EPM agent SDK and the ``epm-agent`` CLI.

- ``agent``: the SDK (``Agent``): enroll, request, status, sync_device_channel.
- ``state``: the state dir (SQLite + the 0600 device key).
- ``device_key``: the device's Ed25519 key; ``private_file``: 0600 files for secrets.
- ``elevation``: the signed ElevationRequested message.
- ``enrollment``: the HTTP enrollment call; ``nats_tls``: the NATS CA in the state dir.
- ``device_channel``: reading decisions, policy, key updates and lockout lifts from EPM_DEVICE.
- ``offline``: offline codes (request codes, responses, access codes), with the pure
  ``challenges``, ``access_codes``, ``lockout`` and ``offline_log`` and their tables in
  ``offline_state``; ``self_service``: ``offline generate``; ``encryption_key``: the X25519
  key; ``clock``: the time (``EPM_AGENT_NOW`` in tests).
- ``cli``: ``epm-agent``.
"""

from epm_agent.agent import Agent, AgentStatus, RequestOutcome
from epm_agent.errors import AgentError, NotEnrolled, ServerUnreachable

__all__ = [
    "Agent",
    "AgentError",
    "AgentStatus",
    "NotEnrolled",
    "RequestOutcome",
    "ServerUnreachable",
]

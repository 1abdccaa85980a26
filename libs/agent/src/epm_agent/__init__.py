"""epm_agent: the reference EPM agent SDK and the ``epm-agent`` CLI.

- ``agent``: the SDK (``Agent``): enroll, request, status, sync_device_channel.
- ``state``: the state dir (SQLite + the 0600 device key).
- ``device_key``: the device's Ed25519 key; ``private_file``: 0600 files for secrets.
- ``elevation``: the signed ElevationRequested message.
- ``enrollment``: the HTTP enrollment call.
- ``device_channel``: reading decisions from EPM_DEVICE.
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

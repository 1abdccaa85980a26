"""Key rotations owed by replayed offline admin sessions: made if nobody made them.

request-svc asks for the rotation as it replays an AdminSessionStarted (DESIGN.md: the
device key version is rotated at the next online contact). That call can be lost: approval-svc
unreachable, or request-svc killed between the append and the call. The offline view keeps
a rotation owed while a device's last admin session came after its last DeviceKeyRotated
(``rotations_owed``); this worker looks every ``CHECK_SECONDS`` and rotates a key that was
already owed at the previous look (so request-svc's own call, a moment ago, is left to
finish). Every replica's worker may try: the rotation appends with the key's expected
sequence, and one that finds the key rotated meanwhile stops (``OfflineCommands._rotate``).
"""

from __future__ import annotations

import logging

from epm_approval.offline_commands import OfflineCommands
from epm_approval.offline_view import rotations_owed
from epm_approval.owed import OwedWork

log = logging.getLogger(__name__)

CHECK_SECONDS = 30.0
REASON = "offline admin session"


class OwedRotations(OwedWork[tuple[str, str], tuple[str, str]]):
    task_name = "owed-rotations"
    failure = "could not rotate owed device keys; trying again"

    def __init__(self, offline: OfflineCommands, every: float | None = None) -> None:
        self.offline = offline
        self.every = CHECK_SECONDS if every is None else every

    async def owed(self) -> dict[tuple[str, str], tuple[str, str]]:
        return {owed: owed for owed in await self.offline.o.view.read(rotations_owed)}

    async def settle(self, item: tuple[str, str]) -> None:
        tenant, device_id = item
        answer = await self.offline.rotate_owed(tenant, device_id, REASON)
        log.warning(
            "device key rotated after an offline admin session, late",
            extra={"tenant": tenant, "device_id": device_id, **answer},
        )

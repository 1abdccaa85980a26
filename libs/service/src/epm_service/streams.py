"""``epm streams apply``: create or update the streams of epm_events.streams, idempotently."""

from __future__ import annotations

from epm_events.streams import ALL_STREAMS, StreamSpec
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError


def stream_config(spec: StreamSpec, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=spec.max_age_seconds,
        max_msg_size=spec.max_msg_size,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        duplicate_window=spec.duplicate_window_seconds,
        num_replicas=replicas,
        deny_delete=spec.deny_delete,
        deny_purge=spec.deny_purge,
        allow_direct=spec.allow_direct,
    )


async def apply_streams(
    js: JetStreamContext,
    replicas: int = 1,
    specs: tuple[StreamSpec, ...] = ALL_STREAMS,
) -> list[tuple[str, str]]:
    """Create missing streams and update changed ones; returns (name, action) pairs."""
    done: list[tuple[str, str]] = []
    for spec in specs:
        config = stream_config(spec, replicas)
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(config)
            done.append((spec.name, "created"))
            continue
        if _differs(info.config, config):
            await js.update_stream(config)
            done.append((spec.name, "updated"))
        else:
            done.append((spec.name, "unchanged"))
    return done


def _differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    fields = (
        "subjects",
        "max_age",
        "max_msg_size",
        "duplicate_window",
        "num_replicas",
        "deny_delete",
        "deny_purge",
        "description",
        "allow_direct",
        "max_msgs_per_subject",
    )
    return any(getattr(current, f) != getattr(wanted, f) for f in fields)


class MissingStreams(RuntimeError):
    pass


async def check_streams(js: JetStreamContext, names: tuple[str, ...]) -> None:
    """Services never define streams; they refuse to start without them."""
    missing = []
    for name in names:
        try:
            await js.stream_info(name)
        except NotFoundError:
            missing.append(name)
    if missing:
        raise MissingStreams(
            f"stream(s) {', '.join(missing)} missing: run 'epm streams apply' first"
        )

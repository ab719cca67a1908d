"""Notifications through apprise (Discord, Slack, e-mail, generic JSON...): one URL per target.

The URLs come only from the environment (`PYROCAST_NOTIFY_URLS`, comma-separated) because they embed
secrets (a Discord webhook URL is its own password). They are never printed or logged: targets are named
by position ("target 2 of 3") and the logging of apprise and urllib3, which include the URL, is muted while
sending.
A notification that fails is logged and counted; it never fails the run that sent it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyrocast.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class NotifyResult:
    """What happened to one notification."""

    configured: int = 0
    sent: int = 0
    failed: list[str] = field(default_factory=list)  # "target i of n: reason", never the URL

    @property
    def ok(self) -> bool:
        return self.configured > 0 and not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {"configured": self.configured, "sent": self.sent, "failed": list(self.failed)}


def notify_urls(settings: Settings) -> list[str]:
    """The configured target URLs (empty when none)."""
    raw = settings.notify_urls.get_secret_value() if settings.notify_urls else ""
    return [u.strip() for u in raw.replace("\n", ",").split(",") if u.strip()]


# Loggers that write target URLs (webhook tokens included) while sending: apprise at debug and error
# level, urllib3 (under requests) at debug level.
_LEAKY_LOGGERS = ("apprise", "urllib3", "requests")


@contextlib.contextmanager
def _muted_transports() -> Iterator[None]:
    """Silence the loggers that would print target URLs while a notification is sent."""
    saved = []
    for name in _LEAKY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.CRITICAL + 1)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            logger.setLevel(level)
            logger.propagate = propagate


def send(settings: Settings, title: str, body: str) -> NotifyResult:
    """Send `title`/`body` (markdown) to every configured target; never raises."""
    urls = notify_urls(settings)
    result = NotifyResult(configured=len(urls))
    if not urls:
        log.info("no notification target configured (set PYROCAST_NOTIFY_URLS); skipped: %s", title)
        return result
    try:
        import apprise
    except ImportError:  # pragma: no cover - apprise is a dependency
        result.failed.append("apprise is not installed")
        return result
    with _muted_transports():
        for i, url in enumerate(urls, 1):
            where = f"target {i} of {len(urls)}"
            try:
                ap = apprise.Apprise()
                if not ap.add(url):
                    result.failed.append(f"{where}: not a URL apprise understands")
                    continue
                if ap.notify(title=title, body=body, body_format=apprise.NotifyFormat.MARKDOWN):
                    result.sent += 1
                else:
                    result.failed.append(f"{where}: delivery failed")
            except Exception as exc:  # a notification must never fail the caller
                result.failed.append(f"{where}: {type(exc).__name__}")
    for f in result.failed:
        log.warning("notification not delivered (%s)", f)
    return result


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("n/a" if v is None else str(v))


def training_message(
    *,
    run_name: str,
    model_name: str,
    version: str | None,
    verdict: str,
    reason: str,
    metrics: dict[str, Any],
    profile: str,
    duration_s: float | None = None,
) -> tuple[str, str]:
    """Title and markdown body announcing a finished training run."""
    icon = {"champion": "🏆", "challenger": "🥊", "rejected": "✋", "failed": "❌"}.get(verdict, "ℹ️")
    title = f"{icon} Pyrocast training {run_name}: {verdict}"
    lines = [
        f"**Model** {model_name} version {version or 'not registered'} (profile {profile})",
        f"**Decision** {verdict}: {reason}",
        "**Test metrics** "
        + ", ".join(f"{k} {_fmt(metrics.get(k))}" for k in ("accuracy", "f1", "roc_auc", "ece", "n") if k in metrics),
    ]
    if duration_s is not None:
        lines.append(f"**Duration** {duration_s:.0f} s")
    return title, "\n".join(lines)

"""Notifications reach real HTTP endpoints on 127.0.0.1; failures are counted, never raised, never leak URLs."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from pyrocast.notify import notify_urls, send, training_message
from pyrocast.ports import free_port
from pyrocast.settings import Settings
from tests.support.webhook import WebhookReceiver


def _with_urls(settings: Settings, urls: str) -> Settings:
    return settings.model_copy(update={"notify_urls": SecretStr(urls)})


def test_no_url_configured_is_logged_and_skipped(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyrocast.notify")
    r = send(settings, "title", "body")
    assert (r.configured, r.sent, r.failed) == (0, 0, [])
    assert "no notification target configured" in caplog.text


def test_urls_come_from_the_environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYROCAST_NOTIFY_URLS", "json://127.0.0.1:1/a, json://127.0.0.1:2/b,")
    assert notify_urls(Settings()) == ["json://127.0.0.1:1/a", "json://127.0.0.1:2/b"]


def test_json_message_arrives(settings: Settings) -> None:
    title, body = training_message(
        run_name="train-1",
        model_name="pyrocast-wildfire",
        version="4",
        verdict="challenger",
        reason="better than the champion",
        metrics={"accuracy": 0.97, "f1": 0.96, "n": 55},
        profile="quick",
        duration_s=80.0,
    )
    with WebhookReceiver() as hook:
        r = send(_with_urls(settings, f"json://127.0.0.1:{hook.port}/hook"), title, body)
        got = hook.wait_for(1)
    assert r.ok and r.sent == 1
    assert got[0].path == "/hook"
    assert got[0].body["title"] == title and "challenger" in got[0].body["title"]
    assert "version 4" in got[0].body["message"] and "accuracy 0.970" in got[0].body["message"]


def test_discord_webhook_protocol(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """apprise's real Discord plugin, pointed at a local stand-in of Discord's webhook endpoint."""
    from apprise.plugins.discord import NotifyDiscord

    with WebhookReceiver(status=204) as hook:
        monkeypatch.setattr(NotifyDiscord, "notify_url", f"http://127.0.0.1:{hook.port}/api/webhooks")
        r = send(_with_urls(settings, "discord://123456789/secret-token-xyz"), "Pyrocast: champion", "**v1**")
        got = hook.wait_for(1)
    assert r.ok
    assert got[0].path == "/api/webhooks/123456789/secret-token-xyz"
    payload = got[0].body
    assert "Pyrocast: champion" in str(payload)


def test_failures_never_raise_and_never_show_urls(
    settings: Settings, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = free_port()
    secret_path = "hook-with-secret-token-123"
    with WebhookReceiver(status=500) as failing, WebhookReceiver() as ok:
        urls = ",".join(
            [
                f"json://127.0.0.1:{dead}/{secret_path}",  # nobody listens
                f"json://127.0.0.1:{failing.port}/{secret_path}",  # answers 500
                "notaprotocol://whatever/secret-token-123",  # apprise does not know it
                f"json://127.0.0.1:{ok.port}/fine",
            ]
        )
        r = send(_with_urls(settings, urls), "t", "b")
        assert ok.wait_for(1)
    assert (r.configured, r.sent) == (4, 1)
    assert [f.split(":")[0] for f in r.failed] == ["target 1 of 4", "target 2 of 4", "target 3 of 4"]
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err, str(r.as_dict())):
        assert "secret-token-123" not in text

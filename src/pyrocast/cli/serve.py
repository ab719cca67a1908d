"""`pyrocast serve ...` runs one service in the foreground; `pyrocast rollout ...` drives the gateway's rollout."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx
import typer

from pyrocast.cli.common import out, settings
from pyrocast.errors import PyrocastError, ServiceUnavailableError
from pyrocast.report import Report
from pyrocast.serving.rollout import FLEET

DATA_DIR = typer.Option(None, "--data-dir", help="Data directory (default: PYROCAST_DATA_DIR or ./.pyrocast).")
URL = typer.Option(None, "--url", help="Gateway URL (default: http://<serving.host>:<serving.gateway_port>).")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
REASON = typer.Option(None, "--reason", help="Why (recorded with the rollout event).")


def register(app: typer.Typer) -> None:
    serve = typer.Typer(help="Run one serving process in the foreground (Ctrl-C stops it).", no_args_is_help=True)
    serve.command("classifier")(serve_classifier)
    serve.command("explainer")(serve_explainer)
    serve.command("gateway")(serve_gateway)
    serve.command("webapp")(serve_webapp)
    app.add_typer(serve, name="serve")

    rollout = typer.Typer(
        help="Show or change how the gateway splits traffic between champion and challenger. Changes need "
        "PYROCAST_ADMIN_TOKEN (the gateway's token).",
        no_args_is_help=True,
    )
    rollout.command("status")(status)
    rollout.command("champion")(champion)
    rollout.command("ab")(ab)
    rollout.command("canary")(canary)
    rollout.command("shadow")(shadow)
    rollout.command("promote")(promote)
    rollout.command("rollback")(rollback)
    app.add_typer(rollout, name="rollout")


# --- serve ----------------------------------------------------------------------------------------------------
def _exec(cmd: list[str], env: dict[str, str]) -> None:
    """Replace this process with the service, so that signals (Ctrl-C, SIGTERM) reach it directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, {**os.environ, **env})


def serve_classifier(
    role: str = typer.Option("champion", "--role", help="champion or challenger: chooses the default port and model."),
    model: str | None = typer.Option(None, "--model", help="Registry alias or version (default: the role's alias)."),
    bundle: Path | None = typer.Option(None, "--bundle", help="Serve a bundle folder instead of a registered model."),
    precision: str | None = typer.Option(None, "--precision", help="fp32, int8 or auto (default: serving.precision)."),
    port: int | None = typer.Option(None, "--port", help="Port (default: serving.champion_port/challenger_port)."),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="Adaptive batching (on by default)."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: serving.device)."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Serve one model version with BentoML + ONNX Runtime (adaptive batching)."""
    from pyrocast.model.bundle import load_bundle, provider_for
    from pyrocast.serving import bundles, procs

    if role not in ("champion", "challenger"):
        raise PyrocastError(f"unknown role {role!r}", "use --role champion or --role challenger")
    s = settings(data_dir)
    if device is not None:
        provider_for(device)  # a clear error now rather than a traceback from the worker
        s.serving.device = device  # type: ignore[assignment]  # checked just above
    env = procs.settings_env(s)
    if bundle is not None:
        b = load_bundle(bundle)  # a clear error now rather than a traceback from the worker
        env[bundles.ENV_BUNDLE] = str(bundle.resolve())
    else:
        b = bundles.resolve_bundle(s, ref=model or role)  # fetches (and caches) the version once, here
        env[bundles.ENV_MODEL] = model or role
    p = bundles.resolve_precision(b, precision or s.serving.precision)
    env[bundles.ENV_PRECISION] = p
    env[bundles.ENV_BATCHING] = "1" if batching else "0"
    port = port or (s.serving.champion_port if role == "champion" else s.serving.challenger_port)
    # One BentoML home per service: BentoML wipes the Prometheus files in its home when a server starts.
    env["BENTOML_HOME"] = str(s.root / "bentoml" / f"classifier-{role}-{port}")
    out.print(f"serving {b.name} v{b.version} ({p}, {s.serving.device}) as {role} on http://{s.serving.host}:{port}")
    _exec([procs.bentoml_exe(), "serve", procs.CLASSIFIER, "--host", s.serving.host, "--port", str(port)], env)


def serve_explainer(
    port: int | None = typer.Option(None, "--port", help="Port (default: serving.explainer_port)."),
    bundle: list[str] = typer.Option([], "--bundle", help="VERSION=FOLDER to explain from a folder (repeatable)."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Serve attribution heatmaps for registered model versions (or bundle folders)."""
    from pyrocast.serving import procs

    s = settings(data_dir)
    env = procs.settings_env(s)
    if bundle:
        bad = [b for b in bundle if "=" not in b]
        if bad:
            raise PyrocastError(f"--bundle wants VERSION=FOLDER, got {bad[0]!r}")
        env["PYROCAST_EXPLAIN_BUNDLES"] = os.pathsep.join(bundle)
    port = port or s.serving.explainer_port
    env["BENTOML_HOME"] = str(s.root / "bentoml" / f"explainer-{port}")
    out.print(f"explainer on http://{s.serving.host}:{port}")
    _exec([procs.bentoml_exe(), "serve", procs.EXPLAINER, "--host", s.serving.host, "--port", str(port)], env)


def serve_gateway(
    port: int | None = typer.Option(None, "--port", help="Port (default: serving.gateway_port)."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Run the gateway (the public API) in the foreground."""
    from pyrocast.serving.gateway import main

    s = settings(data_dir)
    port = port or s.serving.gateway_port
    out.print(f"gateway on http://{s.serving.host}:{port} (API docs at /docs)")
    main(["--host", s.serving.host, "--port", str(port)], settings=s)


def serve_webapp(
    port: int | None = typer.Option(None, "--port", help="Port (default: serving.webapp_port)."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Run the web app (map, feedback, models, monitoring) in the foreground; it calls the gateway."""
    from pyrocast.webapp.app import main

    s = settings(data_dir)
    port = port or s.serving.webapp_port
    out.print(f"web app on http://{s.serving.host}:{port} (gateway http://{s.serving.host}:{s.serving.gateway_port})")
    main(["--host", s.serving.host, "--port", str(port)], settings=s)


# --- rollout --------------------------------------------------------------------------------------------------
def _gateway(url: str | None, data_dir: Path | None) -> tuple[str, str | None]:
    s = settings(data_dir)
    token = s.admin_token.get_secret_value() if s.admin_token else None
    return (url or f"http://{s.serving.host}:{s.serving.gateway_port}").rstrip("/"), token


def _call(method: str, url: str, path: str, token: str | None = None, body: dict[str, Any] | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, url + path, json=body, headers=headers, timeout=60.0)
    except httpx.HTTPError as exc:
        raise ServiceUnavailableError(
            f"the gateway at {url} does not answer ({type(exc).__name__})",
            "start it with `pyrocast up` or `pyrocast serve gateway`, or pass --url",
        ) from exc
    if r.status_code >= 400:
        raise PyrocastError(*_error_of(r))
    return r.json()


def _error_of(r: httpx.Response) -> tuple[str, str | None]:
    try:
        detail = r.json().get("detail")
    except ValueError:
        return f"gateway answered {r.status_code}: {r.text[:200]}", None
    if isinstance(detail, dict):
        return f"gateway answered {r.status_code}: {detail.get('error')}", detail.get("hint")
    if isinstance(detail, list):  # validation errors
        msgs = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
        return f"gateway refused the request ({r.status_code}): {msgs}", None
    return f"gateway answered {r.status_code}: {detail}", None


def _change(action: str, body: dict[str, Any] | None, url: str | None, data_dir: Path | None, as_json: bool) -> None:
    base, token = _gateway(url, data_dir)
    if token is None:
        raise PyrocastError("rollout changes need the admin token", "export PYROCAST_ADMIN_TOKEN=<the gateway's token>")
    _show(_call("POST", base, f"/v1/rollout/{action}", token, body), as_json)


def _model(ref: dict | None) -> str:
    return f"{ref['name']} v{ref['version']}" if ref else "-"


def _show(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(view, indent=2, default=str))
        return
    st = view["state"]
    rep = Report("Rollout")
    rep.add("mode", view["mode"])
    rep.add("challenger share", f"{view['challenger_share']:.0%}")
    for role in ("champion", "challenger"):
        b = view["backends"].get(role) or {}
        up = "up" if b.get("up") else "DOWN"
        rep.add(role, f"{_model(st.get(role))} at {b.get('url', '-')} ({up})")
    if st.get("previous_champion"):
        rep.add("previous champion", _model(st["previous_champion"]))
    if view["mode"] == "ab" and st.get("ab"):
        rep.add("weights", f"champion {st['ab']['champion']:g} / challenger {st['ab']['challenger']:g}")
    if view["mode"] == "canary" and st.get("canary"):
        c = st["canary"]
        rep.add("canary steps", " -> ".join(f"{x:.0%}" for x in c["steps"]) + f", every {c['step_seconds']:g} s")
        g = c["guardrails"]
        rep.add(
            "guardrails",
            f"errors <= {g['max_error_rate']:.0%}, p95 <= {g['max_p95_ms']:g} ms, "
            f"disagreement <= {g['max_disagreement']:.0%} (after {g['min_requests']} requests)",
        )
    if view["mode"] == "shadow":
        rep.add("shadow sample", f"{st['shadow_sample']:.0%}")
    if st.get("stopped_reason"):
        rep.add("stopped", st["stopped_reason"])
    for key, title in (("challenger", "challenger (recent, here)"), (FLEET, "challenger (recent, all gateways)")):
        ch = st.get("stats", {}).get(key, {})
        if ch.get("requests") or ch.get("compared"):
            p95 = ch.get("p95_ms")
            rep.add(
                title,
                f"{ch['requests']} calls, {ch['error_rate']:.1%} errors, p95 {p95 if p95 is not None else '-'} ms, "
                f"{ch['disagreement']:.1%} disagreement over {ch['compared']} compared",
            )
    events = view.get("events", [])[:5]
    if events:  # one fact: events recorded in the same second must not replace each other
        rep.add(
            "recent events",
            "\n".join(f"{(e['ts'] or '')[:19]}  {e['action']}: {e.get('reason') or ''}" for e in events),
        )
    rep.render(out)


def status(url: str | None = URL, as_json: bool = JSON, data_dir: Path | None = DATA_DIR) -> None:
    """Show the rollout: mode, who serves what, live share, guardrail statistics, recent events."""
    base, _ = _gateway(url, data_dir)
    _show(_call("GET", base, "/v1/rollout"), as_json)


def champion(
    reason: str | None = REASON, url: str | None = URL, as_json: bool = JSON, data_dir: Path | None = DATA_DIR
) -> None:
    """Champion only: stop any A/B test, canary or shadow traffic."""
    _change("champion", {"reason": reason}, url, data_dir, as_json)


def ab(
    champion_weight: float = typer.Argument(50.0, min=0.0, help="Champion's weight."),
    challenger_weight: float = typer.Argument(50.0, min=0.0, help="Challenger's weight."),
    url: str | None = URL,
    as_json: bool = JSON,
    data_dir: Path | None = DATA_DIR,
) -> None:
    """A/B test with weights (e.g. `ab 90 10`); a client keeps its variant (sticky by client id)."""
    _change("ab", {"champion": champion_weight, "challenger": challenger_weight}, url, data_dir, as_json)


def canary(
    steps: str = typer.Option("5,25,50,100", "--steps", help="Challenger share per step, in percent."),
    every: float = typer.Option(60.0, "--every", help="Seconds per step."),
    max_error_rate: float = typer.Option(0.05, "--max-error-rate", help="Stop above this challenger error rate."),
    max_p95_ms: float = typer.Option(1000.0, "--max-p95-ms", help="Stop above this challenger p95 latency."),
    max_disagreement: float = typer.Option(0.25, "--max-disagreement", help="Stop above this disagreement."),
    min_requests: int = typer.Option(20, "--min-requests", help="Observations before a guardrail may stop it."),
    auto_promote: bool = typer.Option(False, "--auto-promote", help="Promote when the last step has passed."),
    url: str | None = URL,
    as_json: bool = JSON,
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Canary: the challenger's share ramps on a schedule; a broken guardrail returns to the champion."""
    try:
        shares = [float(x) / 100.0 for x in steps.split(",") if x.strip()]
    except ValueError as exc:
        raise PyrocastError(f"--steps wants percentages like 5,25,50,100, got {steps!r}") from exc
    body = {
        "steps": shares,
        "step_seconds": every,
        "auto_promote": auto_promote,
        "guardrails": {
            "max_error_rate": max_error_rate,
            "max_p95_ms": max_p95_ms,
            "max_disagreement": max_disagreement,
            "min_requests": min_requests,
        },
    }
    _change("canary", body, url, data_dir, as_json)


def shadow(
    sample: float = typer.Option(1.0, "--sample", help="Share of requests copied to the challenger (0-1]."),
    url: str | None = URL,
    as_json: bool = JSON,
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Shadow: the champion answers; the challenger gets a copy in the background, both are stored."""
    _change("shadow", {"sample": sample}, url, data_dir, as_json)


def promote(
    reason: str | None = REASON, url: str | None = URL, as_json: bool = JSON, data_dir: Path | None = DATA_DIR
) -> None:
    """Make the challenger the champion (moves the registry aliases); the old champion is kept for rollback."""
    _change("promote", {"reason": reason}, url, data_dir, as_json)


def rollback(
    reason: str | None = REASON, url: str | None = URL, as_json: bool = JSON, data_dir: Path | None = DATA_DIR
) -> None:
    """Restore the previous champion (or, without one, stop the running experiment)."""
    _change("rollback", {"reason": reason}, url, data_dir, as_json)

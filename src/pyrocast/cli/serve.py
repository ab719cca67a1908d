"""`pyrocast serve ...` runs one service in the foreground; `pyrocast rollout ...` drives the gateway's rollout."""

from __future__ import annotations

import itertools
import math
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import typer

from pyrocast.cli.common import GATEWAY, old_gateway_name, out, pick_gateway, settings
from pyrocast.errors import InvalidInputError, PyrocastError
from pyrocast.ports import service_url
from pyrocast.report import Report
from pyrocast.serving.rollout import FLEET, share_text
from pyrocast.simulate.gateway import check_token, transport_error

DATA_DIR = typer.Option(None, "--data-dir", help="Data directory (default: PYROCAST_DATA_DIR or ./.pyrocast).")
URL = old_gateway_name("--url")
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
    rollout.command("ab", context_settings={"ignore_unknown_options": True})(ab)  # `ab -1 5`: a weight, not a flag
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


def _free(host: str, port: int, what: str) -> None:
    """A clear error before starting a service on a port something already listens on (BentoML and uvicorn
    answer that with a traceback)."""
    from pyrocast.ports import port_in_use

    if port_in_use(host, port):
        raise PyrocastError(
            f"port {port} is in use: something already listens on {host}:{port}, so the {what} cannot start there",
            "stop what runs there, or give another port with --port (`pyrocast rollout status` shows which port "
            "serves which role: a promotion or rollback swaps them)",
        )


def serve_classifier(
    role: str | None = typer.Option(
        None,
        "--role",
        help="champion or challenger: chooses the default port and model (default: --model's alias, else champion).",
    ),
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

    if role is None:  # `--model challenger` alone is the challenger (it printed "as champion", on call mid-incident)
        role = model if model in ("champion", "challenger") else "champion"
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
        # The version, not the alias: a worker BentoML restarts must not load what a promotion moved it to.
        env[bundles.ENV_MODEL] = str(b.version)
    p = bundles.resolve_precision(b, precision or s.serving.precision)
    env[bundles.ENV_PRECISION] = p
    env[bundles.ENV_BATCHING] = "1" if batching else "0"
    port = port or (s.serving.champion_port if role == "champion" else s.serving.challenger_port)
    _free(s.serving.host, port, "classifier")
    # A TMPDIR and a BentoML home of its own, as `up` gives it, emptied now (the port is free): BentoML's per-request
    # folders and sockets of a run killed with SIGKILL otherwise stayed in /tmp, and BentoML wipes the Prometheus
    # files in its home when a server starts.
    env.update(procs.fresh_tmp_env(procs.bento_tmp_dir(s, f"classifier-{role}", port)))
    env["BENTOML_HOME"] = procs.bentoml_home(s, f"classifier-{role}", port)
    out.print(
        f"serving {b.name} v{b.version} ({p}, {s.serving.device}) as {role} on {service_url(s.serving.host, port)}"
    )
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
    _free(s.serving.host, port, "explainer")
    env.update(procs.fresh_tmp_env(procs.bento_tmp_dir(s, "explainer", port)))  # as the classifier's
    env["BENTOML_HOME"] = procs.bentoml_home(s, "explainer", port)
    out.print(f"explainer on {service_url(s.serving.host, port)}")
    _exec([procs.bentoml_exe(), "serve", procs.EXPLAINER, "--host", s.serving.host, "--port", str(port)], env)


def serve_gateway(
    port: int | None = typer.Option(None, "--port", help="Port (default: serving.gateway_port)."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Run the gateway (the public API) in the foreground."""
    from pyrocast.serving.gateway import main

    s = settings(data_dir)
    port = port or s.serving.gateway_port
    _free(s.serving.host, port, "gateway")
    out.print(f"gateway on {service_url(s.serving.host, port)} (API docs at /docs)")
    main(["--host", s.serving.host, "--port", str(port)], settings=s)


def serve_webapp(
    port: int | None = typer.Option(None, "--port", help="Port (default: serving.webapp_port)."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Run the web app (map, feedback, models, monitoring) in the foreground; it calls the gateway."""
    from pyrocast.webapp.app import main

    s = settings(data_dir)
    port = port or s.serving.webapp_port
    _free(s.serving.host, port, "web app")
    out.print(
        f"web app on {service_url(s.serving.host, port)} (gateway {service_url(s.serving.host, s.serving.gateway_port)})"
    )
    main(["--host", s.serving.host, "--port", str(port)], settings=s)


# --- rollout --------------------------------------------------------------------------------------------------
# The API's field names, as the CLI's options: a refused value is named the way the user typed it.
FLAGS = {
    "steps": "--steps",
    "step_seconds": "--every",
    "guardrails.max_error_rate": "--max-error-rate",
    "guardrails.max_p95_ms": "--max-p95-ms",
    "guardrails.max_disagreement": "--max-disagreement",
    "guardrails.min_requests": "--min-requests",
    "guardrails.window": "--window",
    "sample": "--sample",
    "champion": "the champion's weight",
    "challenger": "the challenger's weight",
    "reason": "--reason",
}


def _gateway(gateway: str | None, url: str | None, data_dir: Path | None) -> tuple[str, str | None]:
    s = settings(data_dir)
    token = s.admin_token.get_secret_value() if s.admin_token else None
    base = pick_gateway(gateway, url, "--url") or service_url(s.serving.host, s.serving.gateway_port)
    return base.rstrip("/"), token


def _call(method: str, url: str, path: str, token: str | None = None, body: dict[str, Any] | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, url + path, json=body, headers=headers, timeout=60.0)
    except httpx.HTTPError as exc:
        raise transport_error(url, exc) from None
    if r.status_code >= 400:
        raise PyrocastError(*_error_of(r))
    try:
        return r.json()
    except ValueError:
        raise PyrocastError(
            f"{url} answered {r.status_code} without JSON", "is this the Pyrocast gateway's address?"
        ) from None


def _error_of(r: httpx.Response) -> tuple[str, str | None]:
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        # Not the gateway's JSON (another server's HTML page, say): its body says nothing useful here.
        return f"{r.url.copy_with(query=None)} answered {r.status_code}, not as the gateway does", (
            "is this the Pyrocast gateway's address? (--gateway)"
        )
    if isinstance(detail, dict):
        return f"gateway answered {r.status_code}: {detail.get('error')}", detail.get("hint")
    if isinstance(detail, list):  # validation errors
        return f"gateway refused the request ({r.status_code}): {'; '.join(map(_invalid, detail))}", None
    return f"gateway answered {r.status_code}: {detail}", None


def _invalid(d: dict[str, Any]) -> str:
    field = ".".join(str(p) for p in d.get("loc", [])[1:])
    msg = str(d.get("msg", "")).removeprefix("Value error, ")
    return f"{FLAGS.get(field, field)}: {msg}" if field else msg


def _change(
    action: str, body: dict[str, Any] | None, gateway: str | None, url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    base, token = _gateway(gateway, url, data_dir)
    _show(_call("POST", base, f"/v1/rollout/{action}", check_token(token), body), as_json)


def parse_shares(text: str, flag: str, example: str) -> tuple[list[float], str]:
    """Shares in (0, 1] from "5%,25%", "0.05,0.25" or "5,25", and how they were read.

    With a % sign, or any value above 1, every value is a percent; otherwise every value is a fraction. A bare 1
    alone (or only 1s) is refused as ambiguous.
    """
    parts = [p.strip() for p in text.split(",")]
    marked = [p.endswith("%") for p in parts]
    if any(marked) and not all(marked):
        raise InvalidInputError(f"{flag} {text!r} mixes values with and without %", f"e.g. {example}")
    try:
        values = [float(p.removesuffix("%")) for p in parts]
    except ValueError:
        raise InvalidInputError(f"{flag} wants percents or fractions, got {text!r}", f"e.g. {example}") from None
    percent = all(marked) or any(v > 1 for v in values)
    if not percent and all(v == 1 for v in values):
        # Alone, a bare 1 reads as a fraction (100%) while 2 reads as 2%: an operator raising a sample from 1 to 2
        # cut it from 100% to 2%. Said, not guessed.
        raise InvalidInputError(
            f"{flag} {text} is ambiguous: 1 could be the fraction 1 (100%) or 1%", "write 100% or 1%"
        )
    shares = [v / 100 if percent else v for v in values]
    for raw, share in zip(parts, shares, strict=True):
        if not 0 < share <= 1:  # also false for NaN
            unit = "percent" if percent else "a fraction"
            raise InvalidInputError(
                f"{flag}: each share must be above 0% and at most 100%, got {raw} (read as {unit})", f"e.g. {example}"
            )
    return shares, f"{flag} {text} read as {'percent' if percent else 'fractions'}: " + " -> ".join(
        map(share_text, shares)
    )


def _model(ref: dict | None) -> str:
    return f"{ref['name']} v{ref['version']}" if ref else "-"


def _window(w: dict[str, Any]) -> str:
    """One statistics window in words; calls and comparisons are counted apart (a comparison may outlive a reset)."""
    n, m = w.get("requests", 0), w.get("compared", 0)
    if n:
        p95 = w.get("p95_ms")
        # The window keeps only the newest calls (200 by default): a bare "200 calls" read as a total after 900.
        text = f"last {n} calls, {w['errors']} failed ({w['error_rate']:.1%})"
        text += f", p95 {p95:.1f} ms" if p95 is not None else ""
    else:
        text = "no calls since the last change"
    if m:
        text += f"; disagrees with the champion on {w['disagreement']:.1%} of {m} compared"
    return text


def _show(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(view, indent=2, default=str))
        return
    st = view["state"]
    rep = Report("Rollout")
    rep.add("mode", view["mode"])
    rep.add("challenger share", share_text(view["challenger_share"]))
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
        rep.add("canary steps", " -> ".join(map(share_text, c["steps"])) + f", every {c['step_seconds']:g} s")
        if "canary_step_calls" in st and not st.get("canary_complete"):
            calls, needs = st["canary_step_calls"], st["canary_step_needs"]
            rep.add(
                f"step {st['canary_step'] + 1} judged on",
                f"{calls} challenger calls"
                + (f" (ends only once {needs} were judged)" if calls < needs else f" (enough: {needs} needed)"),
            )
        rep.add(
            "when complete",
            "promotes the challenger itself (auto-promote)" if c.get("auto_promote") else "waits for `rollout promote`",
        )
        g = c["guardrails"]
        rep.add(
            "guardrails",
            f"errors <= {share_text(g['max_error_rate'])}, p95 <= {g['max_p95_ms']:g} ms, "
            f"disagreement <= {share_text(g['max_disagreement'])} (after {g['min_requests']} requests)",
        )
    if view["mode"] == "shadow":
        rep.add("shadow sample", share_text(st["shadow_sample"]))
    if st.get("stopped_reason"):
        rep.add("reason", st["stopped_reason"])
    stats = st.get("stats", {})
    for key, title in (
        ("champion", "champion (recent, this gateway)"),
        ("challenger", "challenger (recent, this gateway)"),
        (FLEET, "challenger (recent, all gateways)"),
    ):
        if key in stats:
            rep.add(title, _window(stats[key]))
    if view.get("warnings"):
        rep.add("warnings", "\n".join(view["warnings"]))
    events = view.get("events", [])[:5]
    if events:  # one fact: events recorded in the same second must not replace each other
        rep.add(
            "recent events",
            "\n".join(
                f"{(e['ts'] or '')[:19]}  {e['action']}" + (f": {e['reason']}" if e.get("reason") else "")
                for e in events
            ),
        )
    rep.render(out)


def status(
    gateway: str | None = GATEWAY, url: str | None = URL, as_json: bool = JSON, data_dir: Path | None = DATA_DIR
) -> None:
    """Show the rollout: mode, who serves what, live share, both statistics windows, recent events."""
    base, _ = _gateway(gateway, url, data_dir)
    _show(_call("GET", base, "/v1/rollout"), as_json)


def champion(
    reason: str | None = REASON,
    gateway: str | None = GATEWAY,
    url: str | None = URL,
    as_json: bool = JSON,
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Champion only: stop any A/B test, canary or shadow traffic."""
    _change("champion", {"reason": reason}, gateway, url, data_dir, as_json)


def _finite(flag: str, value: float | None) -> None:
    """Refuse inf and nan, which typer takes for floats and JSON cannot carry (a traceback, before)."""
    if value is not None and not math.isfinite(value):
        raise InvalidInputError(f"{flag} must be a finite number, got {value}")


def ab(
    champion_weight: float | None = typer.Argument(None, min=0.0, help="Champion's weight (default 50)."),
    challenger_weight: float | None = typer.Argument(None, min=0.0, help="Challenger's weight (default 50)."),
    gateway: str | None = GATEWAY,
    url: str | None = URL,
    as_json: bool = JSON,
    data_dir: Path | None = DATA_DIR,
) -> None:
    """A/B test with weights (e.g. `ab 90 10`); a client keeps its variant (sticky by client id)."""
    if challenger_weight is None:
        if champion_weight is not None:
            raise InvalidInputError("give both weights, the champion's and the challenger's", "e.g. `ab 90 10`")
        champion_weight = challenger_weight = 50.0
        if not as_json:
            out.print("no weights given: an even split, champion 50 / challenger 50")
    _finite("the champion's weight", champion_weight)
    _finite("the challenger's weight", challenger_weight)
    body = {"champion": champion_weight, "challenger": challenger_weight}
    _change("ab", body, gateway, url, data_dir, as_json)


DEFAULT_STEPS = "5%,25%,50%,100%"


def canary(
    steps: str | None = typer.Option(
        None,
        "--steps",
        help="Challenger share per step: percents (5%,25%,100% or 5,25,100) or fractions (0.05,0.25,1); "
        "default 5%,25%,50%,100%.",
    ),
    every: float = typer.Option(60.0, "--every", help="Seconds per step."),
    max_error_rate: float = typer.Option(0.05, "--max-error-rate", help="Stop above this challenger error rate."),
    max_p95_ms: float = typer.Option(1000.0, "--max-p95-ms", help="Stop above this challenger p95 latency."),
    max_disagreement: float = typer.Option(0.25, "--max-disagreement", help="Stop above this disagreement."),
    min_requests: int = typer.Option(20, "--min-requests", help="Observations before a guardrail may stop it."),
    window: int = typer.Option(200, "--window", help="Judge the last N observations (at least --min-requests)."),
    auto_promote: bool = typer.Option(False, "--auto-promote", help="Promote when the last step has passed."),
    gateway: str | None = GATEWAY,
    url: str | None = URL,
    as_json: bool = JSON,
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Canary: the challenger's share ramps on a schedule; a broken guardrail returns to the champion."""
    shares, read_as = parse_shares(
        steps or DEFAULT_STEPS, "--steps", "--steps 5%,25%,100%, or 0.05,0.25,1, or 5,25,100"
    )
    if steps is None:  # the schedule is news, a flag the user never typed is not
        read_as = "no --steps given: " + " -> ".join(map(share_text, shares))
    if any(b <= a for a, b in itertools.pairwise(shares)):
        raise InvalidInputError(f"--steps must increase, got {' -> '.join(map(share_text, shares))}")
    for flag, value in (
        ("--max-error-rate", max_error_rate),
        ("--max-p95-ms", max_p95_ms),
        ("--max-disagreement", max_disagreement),
    ):
        _finite(flag, value)
    if not 0 < every < float("inf"):
        raise InvalidInputError(f"--every must be a positive number of seconds, got {every:g}")
    if min_requests > window:  # said in the flags' words (the gateway's 422 names its API fields)
        raise InvalidInputError(
            f"--min-requests ({min_requests}) must not exceed --window ({window}): the guardrails would never have "
            "enough observations to judge",
            f"e.g. --min-requests {min_requests} --window {max(min_requests, 200)}",
        )
    if not as_json:
        out.print(read_as, highlight=False)
    body = {
        "steps": shares,
        "step_seconds": every,
        "auto_promote": auto_promote,
        "guardrails": {
            "max_error_rate": max_error_rate,
            "max_p95_ms": max_p95_ms,
            "max_disagreement": max_disagreement,
            "min_requests": min_requests,
            "window": window,
        },
    }
    _change("canary", body, gateway, url, data_dir, as_json)


def shadow(
    sample: str | None = typer.Option(
        None, "--sample", help="Share of requests copied to the challenger (10% or 0.1); default 100%."
    ),
    gateway: str | None = GATEWAY,
    url: str | None = URL,
    as_json: bool = JSON,
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Shadow: the champion answers; the challenger gets a copy in the background, both are stored."""
    # None tells the default from a typed value: how a value was read is news only when the user typed it.
    shares, read_as = parse_shares("100%" if sample is None else sample, "--sample", "--sample 10%, or 0.1")
    if len(shares) != 1:
        raise InvalidInputError(f"--sample wants one share, got {sample!r}", "e.g. --sample 10%")
    if not as_json and sample is not None:
        out.print(read_as, highlight=False)
    _change("shadow", {"sample": shares[0]}, gateway, url, data_dir, as_json)


def promote(
    reason: str | None = REASON,
    force: bool = typer.Option(
        False, "--force", help="Promote even a version its training run rejected (say why with --reason)."
    ),
    gateway: str | None = GATEWAY,
    url: str | None = URL,
    as_json: bool = JSON,
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Make the challenger the champion (moves the registry aliases); the old champion is kept for rollback."""
    _change("promote", {"reason": reason, "force": force}, gateway, url, data_dir, as_json)


def rollback(
    reason: str | None = REASON,
    gateway: str | None = GATEWAY,
    url: str | None = URL,
    as_json: bool = JSON,
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Restore the previous champion (or, without one, stop the running experiment)."""
    _change("rollback", {"reason": reason}, gateway, url, data_dir, as_json)

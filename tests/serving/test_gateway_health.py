"""What on call sees of the services behind the gateway, over real processes: the explainer hung (a warning and a
field in /healthz, a gauge in /metrics, /healthz not slowed), a gateway told that no explainer runs (nothing said),
and a classifier or explainer worker that BentoML restarted after a SIGKILL (one log line, a counter per role)."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from pyrocast.ports import free_port
from pyrocast.serving import procs
from pyrocast.serving.backends import GONE_AFTER, ExplainerProbe, client_fault
from pyrocast.webapp.app import create_app
from tests.support.servers import ThreadedServer, XyzServer
from tests.support.serving import ServingStack, metric_sum, stack_settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration  # real processes on 127.0.0.1


def _rollout(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/v1/rollout", timeout=10).json()  # type: ignore[no-any-return]


def _health(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/healthz", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _samples(url: str, name: str) -> dict[str, float]:
    """role -> value of the gateway's metric `name` (a family with a role label)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[s.labels["role"]] = s.value
    return out


def _signal_service(svc: procs.ServiceProcess, sig: int) -> None:
    """Signal a BentoML service's leader and workers (they live in sessions of their own)."""
    for p in [psutil.Process(svc.pid), *svc.descendants()]:
        p.send_signal(sig)


def _explain(url: str, jpeg: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/explain", files={"image": ("tile.jpg", jpeg, "image/jpeg")}, data={"version": "1"}, timeout=150
    )


def test_a_hung_explainer_is_a_warning_in_healthz_and_metrics_without_slowing_healthz(
    gw: ServingStack, jpeg: bytes
) -> None:
    assert gw.explainer is not None and gw.gateway is not None
    health = _health(gw.url)
    assert health["explainer"] == {
        "role": "explainer",
        "url": gw.explainer.url,
        "up": True,
        "model": None,
        "precision": None,
        "source": None,
    }
    assert not [w for w in health["warnings"] if "explainer" in w], health
    assert _samples(gw.url, "pyrocast_backend_up")["explainer"] == 1.0
    logged = len(gw.gateway.log_path.read_text())
    # SIGSTOP: connections are still accepted (BentoML's arbiter holds the socket) but never answered, the worst
    # case for a probe; a killed explainer refuses connections at once.
    _signal_service(gw.explainer, signal.SIGSTOP)
    try:
        # A heatmap asked of the hung explainer is given up once its probe fails, not after the whole
        # explain timeout (120 s); asked after that, it fails at once.
        t0 = time.perf_counter()
        waited = _explain(gw.url, jpeg)
        waited_s = time.perf_counter() - t0
        assert waited.status_code == 503, waited.text
        assert waited_s < 60, f"the heatmap waited {waited_s:.0f} s for a hung explainer"
        # Sent at once after the SIGSTOP, it waits: two probes in a row must fail first (4-6 s).
        assert "stopped answering while drawing this heatmap" in waited.json()["detail"]["error"], waited.text
        assert not _health(gw.url)["explainer"]["up"]
        refused = _explain(gw.url, jpeg)
        assert refused.status_code == 503 and "does not answer its health probes" in refused.text, refused.text
        assert "predictions are not affected" in refused.json()["detail"]["hint"]
        took = []
        for _ in range(5):
            t0 = time.perf_counter()
            health = _health(gw.url)
            took.append(time.perf_counter() - t0)
        assert max(took) < 0.5, took  # read from the last probe, never a probe of its own (2 s timeout)
        assert health["status"] == "ok" and health["backends"]["champion"]["up"]  # the champion still answers
        expected = f"the explainer ({gw.explainer.url}) does not answer: heatmaps (/v1/explain) fail with 503"
        assert expected in health["warnings"], health["warnings"]
        assert _samples(gw.url, "pyrocast_backend_up") == {"champion": 1.0, "challenger": 1.0, "explainer": 0.0}
        view = httpx.get(f"{gw.url}/v1/rollout", timeout=10).json()
        assert not [w for w in view["warnings"] if "explainer" in w]  # the rollout does not depend on it
        with TestClient(create_app(gw.settings, gateway=gw.url)) as web:  # every page's status indicator says so
            status = web.get("/api/status").json()
            assert status["gateway"] == "ok" and expected in status["warnings"], status
    finally:
        _signal_service(gw.explainer, signal.SIGCONT)
    assert wait_for(lambda: _health(gw.url)["explainer"]["up"], 15), "the explainer did not come back"
    assert not [w for w in _health(gw.url)["warnings"] if "explainer" in w]
    back = _explain(gw.url, jpeg)
    assert back.status_code == 200 and back.headers["content-type"] == "image/png", back.text
    log = gw.gateway.log_path.read_text()[logged:]
    assert log.count(f"explainer at {gw.explainer.url} stopped answering") == 1, log
    assert log.count(f"explainer at {gw.explainer.url} answers again") == 1, log


def test_a_gateway_told_that_no_explainer_runs_says_nothing_about_it(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path)  # nothing listens on the explainer's port
    quiet = settings.model_copy(update={"serving": settings.serving.model_copy(update={"explainer": False})})
    for s, said in ((settings, True), (quiet, False)):
        with procs.start_gateway(s, port=free_port()) as gateway:
            health = _health(gateway.url)
            warned = [w for w in health["warnings"] if "explainer" in w]
            assert (health["explainer"] is not None, bool(warned)) == (said, said), health
            assert ("explainer" in _samples(gateway.url, "pyrocast_backend_up")) == said


class _SlowExplainer(ThreadedServer):
    """An explainer that is alive but takes `seconds` for each heatmap; its /readyz answers at once, or, with
    `slow_ready_every` = n, every n-th one only after 2.5 s (past the probe's 2 s timeout: a busy explainer)."""

    def __init__(self, seconds: float, slow_ready_every: int = 0) -> None:
        super().__init__()
        self.seconds = seconds
        self.slow_ready_every = slow_ready_every
        self.readies = 0

    def start(self) -> _SlowExplainer:
        seconds, server = self.seconds, self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the gateway gave up waiting: what this test is about

            def do_GET(self) -> None:
                if self.path == "/readyz":
                    server.readies += 1
                    if server.slow_ready_every and server.readies % server.slow_ready_every == 0:
                        time.sleep(2.5)
                self._send(200 if self.path == "/readyz" else 404, b"")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(seconds)
                self._send(200, b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return self._launch(Handler)  # type: ignore[no-any-return]


def test_a_heatmap_that_takes_too_long_fails_that_call_without_calling_the_explainer_down(
    tmp_path: Path, jpeg: bytes
) -> None:
    """A busy explainer (a slow heatmap) is not a dead one: the caller gets a 503 that says so, /healthz and the log
    do not say that it stopped answering."""
    settings = stack_settings(tmp_path)
    with _SlowExplainer(seconds=3.0) as explainer:
        serving = settings.serving.model_copy(update={"explainer_port": explainer.port, "explain_timeout_s": 0.5})
        with procs.start_gateway(settings.model_copy(update={"serving": serving}), port=free_port()) as gateway:
            assert wait_for(lambda: _health(gateway.url)["explainer"]["up"], 15), gateway.log_tail()
            r = httpx.post(
                f"{gateway.url}/v1/explain",
                files={"image": ("tile.jpg", jpeg, "image/jpeg")},
                data={"version": "1"},
                timeout=30,
            )
            assert r.status_code == 503, r.text
            assert "did not answer in time (0.5 s)" in r.json()["detail"]["error"], r.text
            health = _health(gateway.url)
            assert health["explainer"]["up"] and not [w for w in health["warnings"] if "explainer" in w], health
            log = gateway.log_path.read_text()
            assert "did not answer in time" in log and "stopped answering" not in log, log


def _worker(svc: procs.ServiceProcess) -> dict[str, Any]:
    return httpx.get(f"{svc.url}/model/info", timeout=10).json()["worker"]


def _kill_worker(
    gw: ServingStack, svc: procs.ServiceProcess, role: str
) -> tuple[dict[str, Any], str, dict[str, float], int]:
    """SIGKILL `svc`'s BentoML worker and wait until the gateway counts its restart under `role`: (the new worker,
    the gateway's log since, the restart counts then, where that log began)."""
    assert gw.gateway is not None
    before = _worker(svc)
    restarts = _samples(gw.url, "pyrocast_backend_restarts_total")
    logged = len(gw.gateway.log_path.read_text())
    psutil.Process(before["pid"]).kill()
    one_more = {**restarts, role: restarts[role] + 1}
    counted = wait_for(lambda: _samples(gw.url, "pyrocast_backend_restarts_total") == one_more, 60)
    assert counted, gw.gateway.log_tail()
    after = _worker(svc)
    assert after["pid"] != before["pid"] and after["service_pid"] == before["service_pid"]
    log = gw.gateway.log_path.read_text()[logged:]
    assert f"(pid {before['pid']} -> {after['pid']})" in log, log
    return after, log, one_more, logged


def test_a_classifier_worker_restarted_by_bentoml_is_logged_and_counted(gw: ServingStack) -> None:
    """BentoML's arbiter replaces a worker that died (the OOM killer, SIGKILL) without a word in any log; the
    gateway tells by the pid /model/info reports. A classifier started again (a new arbiter) is said, not counted."""
    assert gw.challenger is not None and gw.gateway is not None
    before = _worker(gw.challenger)
    assert before["index"] == 1 and before["pid"] in {p.pid for p in gw.challenger.descendants()}
    assert before["service_pid"] == gw.challenger.pid  # `bentoml serve` is the arbiter
    assert set(_samples(gw.url, "pyrocast_backend_restarts_total")) == {"champion", "challenger", "explainer"}
    after, log, one_more, logged = _kill_worker(gw, gw.challenger, "challenger")
    assert after["index"] == 1
    line = f"classifier at {gw.challenger.url} ({gw.model_name} v2): BentoML restarted its worker 1"
    assert log.count(line) == 1, log
    assert gw.challenger.alive()  # the arbiter never died: `pyrocast up` sees nothing

    # The whole classifier started again: a new arbiter, said once, not a worker restart.
    gw.challenger.stop()
    gw.start_challenger()
    again = _worker(gw.challenger)
    said = f"another service process answers (pid {before['service_pid']} -> {again['service_pid']})"
    assert wait_for(lambda: said in gw.gateway.log_path.read_text()[logged:], 15), gw.gateway.log_tail()  # type: ignore[union-attr]
    assert _samples(gw.url, "pyrocast_backend_restarts_total") == one_more


def test_an_explainer_worker_restarted_by_bentoml_is_logged_and_counted(gw: ServingStack, jpeg: bytes) -> None:
    """The explainer's worker, SIGKILLed, is replaced by BentoML as silently as a classifier's: the gateway tells it
    by the pid its /model/info reports, and heatmaps are drawn again by the new worker."""
    assert gw.explainer is not None and gw.gateway is not None
    before = _worker(gw.explainer)
    assert before["pid"] in {p.pid for p in gw.explainer.descendants()} and before["service_pid"] == gw.explainer.pid
    _, log, _, _ = _kill_worker(gw, gw.explainer, "explainer")
    assert log.count(f"explainer at {gw.explainer.url}: BentoML restarted its worker") == 1, log
    assert "heatmaps it was drawing failed" in log and "the explainer's log does not say why" in log, log
    r = _explain(gw.url, jpeg)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text


def test_a_busy_explainer_slow_to_answer_one_probe_still_draws_the_heatmap(tmp_path: Path, jpeg: bytes) -> None:
    """One probe timing out (every other /readyz takes 2.5 s) is not an explainer gone: a heatmap that takes 6 s is
    waited for and delivered, not given up."""
    settings = stack_settings(tmp_path)
    with _SlowExplainer(seconds=6.0, slow_ready_every=2) as explainer:
        serving = settings.serving.model_copy(update={"explainer_port": explainer.port, "explain_timeout_s": 60.0})
        with procs.start_gateway(settings.model_copy(update={"serving": serving}), port=free_port()) as gateway:
            assert wait_for(lambda: _health(gateway.url)["explainer"]["up"], 15), gateway.log_tail()
            seen = explainer.readies
            r = _explain(gateway.url, jpeg)
            assert r.status_code == 200, r.text
            assert explainer.readies - seen >= 2, "no probe timed out during the heatmap: nothing was checked"
            assert "stopped answering" in gateway.log_path.read_text()  # the slow probe was seen as such


def test_a_hung_champion_costs_users_a_503_at_once_once_its_probes_failed(gw: ServingStack, jpeg: bytes) -> None:
    """A champion that accepts connections but never answers (SIGSTOP; a VM pause, a wedged worker): once two probes
    in a row failed, a prediction is a 503 at once (each waited the whole 30 s call timeout for it), and predictions
    are answered again once a probe finds it back."""
    assert gw.champion is not None

    def predict() -> tuple[httpx.Response, float]:
        t0 = time.perf_counter()
        r = httpx.post(f"{gw.url}/v1/predict", files={"image": ("t.jpg", jpeg, "image/jpeg")}, timeout=60)
        return r, time.perf_counter() - t0

    in_flight: list[int] = []
    _signal_service(gw.champion, signal.SIGSTOP)
    try:
        # Sent before the probes find it hung: given up once they do, not after the whole stall or 30 s.
        waiting = threading.Thread(target=lambda: in_flight.append(predict()[0].status_code))
        waiting.start()
        gone = wait_for(
            lambda: httpx.get(f"{gw.url}/healthz", timeout=10).json()["backends"]["champion"]["up"] is False
        )
        assert gone, "the probes never found the champion hung"
        time.sleep(2 * 2.0 + 0.5)  # two probes in a row (every 2 s)
        r, took = predict()
        assert r.status_code == 503 and "does not answer its health probes" in r.text, r.text
        assert took < 3.0, f"a prediction waited {took:.1f} s for a champion known to be hung"
        waiting.join(10)  # still stopped: it must have been given up with the probes (it waited out the stall)
        assert in_flight == [503], in_flight
    finally:
        _signal_service(gw.champion, signal.SIGCONT)
    assert wait_for(lambda: predict()[0].status_code == 200, 30), "predictions did not come back with the champion"
    assert [predict()[0].status_code for _ in range(5)] == [200] * 5


def test_a_busy_classifier_that_answers_its_probes_is_never_gone() -> None:
    """Only probes that get no answer count towards `gone` (calls refused at once): a saturated classifier answering
    /model/info with 429 (BentoML's max_concurrency exempts only /readyz) keeps serving, and one that answers "not
    ready" is down, but not hung."""
    from pyrocast.serving.backends import Backend
    from tests.support.servers import LocalServer

    class Classifier(LocalServer):
        ready, info = 200, 200

        def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
            if path == "/readyz":
                return self.ready, {}, b""
            body = json.dumps({"name": "m", "version": "1"}).encode()
            return self.info, {"Content-Type": "application/json"}, body

    async def probes(url: str, n: int) -> list[tuple[bool, bool]]:
        async with httpx.AsyncClient() as client:
            be = Backend("a", url, client)
            return [(await be.probe(), be.gone) for _ in range(n)]

    with Classifier() as svc:
        assert asyncio.run(probes(svc.base, 1)) == [(True, False)]

        async def saturated() -> list[tuple[bool, bool, str | None]]:
            async with httpx.AsyncClient() as client:
                be = Backend("a", svc.base, client)
                svc.info = 200
                await be.probe()
                svc.info = 429
                out = []
                for _ in range(3):
                    up = await be.probe()
                    out.append((up, be.gone, be.ref.version if be.ref else None))
                return out

        assert asyncio.run(saturated()) == [(True, False, "1")] * 3
        svc.info, svc.ready = 200, 503
        assert asyncio.run(probes(svc.base, 3)) == [(False, False)] * 3  # down, answering: not gone
        url = svc.base

    async def refused_then_answered() -> list[bool]:
        async with httpx.AsyncClient() as client:
            be = Backend("a", url, client)  # nothing listens there any more: no answer
            seen = []
            for _ in range(GONE_AFTER):
                await be.probe()
                seen.append(be.gone)
            be.answered()  # a call in flight through a stall is answered: calls go to it again at once
            return [*seen, be.gone]

    assert asyncio.run(refused_then_answered()) == [False] * (GONE_AFTER - 1) + [True, False]


def test_probes_that_fail_side_by_side_count_as_one_failure_not_two_in_a_row() -> None:
    """A rollout change probes the services beside the ticker's probe: a busy explainer slow to answer both is one
    moment seen twice, and must not be given up on (`gone`) as if two probes in a row had failed."""

    async def run(url: str) -> list[tuple[int, bool]]:
        async with httpx.AsyncClient() as client:
            probe = ExplainerProbe(url, client)
            seen = []
            await asyncio.gather(probe.probe(), probe.probe())  # each /readyz takes 2.5 s: both time out at 2 s
            seen.append((probe.failed_probes, probe.gone))
            await probe.probe()  # a later probe, failing too: now two in a row
            seen.append((probe.failed_probes, probe.gone))
            return seen

    with _SlowExplainer(seconds=0.0, slow_ready_every=1) as explainer:
        assert asyncio.run(run(explainer.base)) == [(1, False), (GONE_AFTER, True)]
        assert explainer.readies == 3


def test_a_heatmap_of_a_place_asks_no_tile_of_the_imagery_once_the_explainer_is_gone(tmp_path: Path) -> None:
    """With its explainer gone, `/v1/explain` by coordinates is refused before the imagery provider is asked for a
    tile (a paid Mapbox request nobody would see); a bad coordinate is still a 422 first."""
    settings = stack_settings(tmp_path)
    dead = free_port()  # nothing listens: every probe of the explainer fails
    with XyzServer() as imagery:
        serving = settings.serving.model_copy(update={"explainer_port": dead})
        imagery_cfg = settings.imagery.model_copy(update={"provider": "xyz", "xyz_url": imagery.template("png")})
        with procs.start_gateway(
            settings.model_copy(update={"serving": serving, "imagery": imagery_cfg}), port=free_port()
        ) as gateway:
            place = {"lat": 45.48, "lon": -73.53, "version": "1"}
            r = httpx.post(f"{gateway.url}/v1/explain", json={**place, "lat": 91.0}, timeout=30)
            assert r.status_code == 422, r.text

            tries = iter(range(1, 1000))

            def explain_elsewhere() -> httpx.Response:
                # Another place each time: the gateway keeps the tiles it fetched.
                where = {**place, "lat": place["lat"] + 0.01 * next(tries)}
                r = httpx.post(f"{gateway.url}/v1/explain", json=where, timeout=30)
                assert r.status_code == 503, r.text
                return r

            # Given up on once two probes in a row failed (a request racing that moment may still fetch its tile).
            gone = "does not answer its health probes"
            assert wait_for(lambda: gone in explain_elsewhere().json()["detail"]["error"], 20), gateway.log_tail()
            hits = imagery.hits
            r = explain_elsewhere()
            assert gone in r.json()["detail"]["error"] and "predictions are not affected" in r.json()["detail"]["hint"]
            assert imagery.hits == hits, "a tile was fetched for a heatmap refused at once"


def test_a_worker_restarted_after_the_aliases_moved_loads_the_version_its_service_was_started_for(
    gw: ServingStack,
) -> None:
    """A classifier started for the `champion` alias serves that version for good: after a promotion moved the alias,
    a worker BentoML restarts (it died) must not load the new champion and answer as the old one's role."""
    from pyrocast.registry.models import aliases, move_aliases

    assert gw.champion is not None
    assert httpx.get(f"{gw.champion.url}/model/info", timeout=10).json()["version"] == "1"
    before = aliases(gw.settings)
    move_aliases(gw.settings, {"champion": "2", "challenger": "1"})  # what a promotion does to the registry
    try:
        _kill_worker(gw, gw.champion, "champion")
        assert httpx.get(f"{gw.champion.url}/model/info", timeout=10).json()["version"] == "1"
    finally:
        move_aliases(gw.settings, before)


def test_a_saturated_challenger_is_answered_for_by_the_champion_not_blamed_on_the_user(
    gw: ServingStack, jpeg: bytes
) -> None:
    """A real BentoML challenger past its max_concurrency answers 429: that is the service's state, not the
    image's fault. Every user gets the champion's answer (a 429 was a 422 "the model service refused the image"),
    and the refusals are stored as the challenger's failures, which the guardrails count."""
    assert gw.challenger is not None
    gw.challenger.stop()
    serving = gw.settings.serving.model_copy(update={"max_concurrency": 1})
    one_at_a_time = gw.settings.model_copy(update={"serving": serving})
    gw.challenger = procs.start_classifier(
        one_at_a_time, port=serving.challenger_port, name="challenger", bundle_dir=gw.bundles["2"]
    )
    try:
        assert wait_for(lambda: _health(gw.url)["backends"]["challenger"]["up"], 15), "the challenger never answered"
        gw.set_rollout("ab", {"champion": 0, "challenger": 1})

        async def burst(n: int) -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
                files = {"image": ("t.jpg", jpeg, "image/jpeg")}
                return await asyncio.gather(*(client.post("/v1/predict", files=files) for _ in range(n)))

        answers = [r for _ in range(3) for r in asyncio.run(burst(24))]
        assert [r.status_code for r in answers if r.status_code != 200] == [], answers[0].text
        variants = [r.json()["variant"] for r in answers]
        assert "champion-fallback" in variants, "no call was refused: the challenger was never saturated"
        fallbacks = metric_sum(gw.url, "pyrocast_fallbacks_total")
        assert fallbacks >= variants.count("champion-fallback"), fallbacks
        ids = [r.json()["request_id"] for r in answers if r.json()["variant"] == "champion-fallback"]
        stored = _challenger_errors(gw, ids)
        assert stored and all(e.startswith("HTTP 429") for e in stored), stored
        assert not any(client_fault(e) for e in stored)  # counted by the fleet's guardrail window
    finally:
        gw.challenger.stop()
        gw.start_challenger()  # the usual one, for the tests after this one that use the stack as it is


ANSWER = {"model": {"name": "pyrocast-wildfire", "version": "2"}, "precision": "fp32"}


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, b'{"error": "Not Found"}'),  # another service on the port, or a route a new version renamed
        (200, json.dumps([{**ANSWER, "probability": float("nan"), "label": "wildfire"}]).encode()),
        (200, json.dumps([{**ANSWER, "probability": 0.5, "label": "maybe"}]).encode()),
    ],
    ids=["404", "nan", "unknown-label"],
)
def test_a_challenger_answering_nonsense_is_a_failure_the_champion_answers_for_and_the_canary_stops_on(
    gw: ServingStack, jpeg: bytes, status: int, body: bytes
) -> None:
    """A challenger's 404 gave users a 422 "the model service refused the image" (any 4xx blamed the image), and
    the canary's guardrails never saw a failure; a NaN or an unknown label was stored as served, then answered with
    a bare 500. Only the statuses a service refuses an image with (400, 413, 415, 422) are the client's, and an
    answer out of range is the service's failure."""
    from http.server import ThreadingHTTPServer

    assert gw.challenger is not None
    gw.challenger.stop()

    class Standin(BaseHTTPRequestHandler):
        def _send(self, code: int, payload: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            info = {"name": "pyrocast-wildfire", "version": "2", "source": "folder"}
            known = self.path in ("/readyz", "/model/info")
            self._send(200 if known else 404, json.dumps(info).encode() if known else b"{}")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(status, body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", gw.settings.serving.challenger_port), Standin)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: _health(gw.url)["backends"]["challenger"]["up"], 15), "the stand-in never answered"
        guard = {"max_error_rate": 0.1, "min_requests": 5, "window": 50}
        gw.set_rollout("canary", {"steps": [1.0], "step_seconds": 600, "guardrails": guard})
        with gw.client() as c:
            answers = [c.post("/v1/predict", files={"image": ("t.jpg", jpeg, "image/jpeg")}) for _ in range(8)]
        assert [r.status_code for r in answers] == [200] * 8, answers[0].text
        assert {r.json()["variant"] for r in answers} <= {"champion", "champion-fallback"}
        view = wait_for(lambda: (v := _rollout(gw.url))["mode"] == "champion" and v, 15)
        assert view and "error rate" in view["state"]["stopped_reason"], _rollout(gw.url)
        ids = [r.json()["request_id"] for r in answers if r.json()["variant"] == "champion-fallback"]
        stored = _challenger_errors(gw, ids)  # stored as the challenger's failures, not as served answers
        assert len(ids) >= 5 and len(stored) == len(ids) and all(stored), stored
        # An answer that arrived is no lost connection: without its status the service was marked down (a champion
        # answering one odd tile with NaN was then down for everyone until the next probe).
        from pyrocast.serving.backends import Backend, BackendError

        async def call() -> BackendError:
            async with httpx.AsyncClient() as client, aiohttp.ClientSession() as session:
                be = Backend("b", f"http://127.0.0.1:{gw.settings.serving.challenger_port}", client)
                be.session = session
                with pytest.raises(BackendError) as err:
                    await be.predict(jpeg, "image/jpeg")
                return err.value

        assert asyncio.run(call()).status == status
    finally:
        server.shutdown()
        server.server_close()
        gw.start_challenger()


def _challenger_errors(gw: ServingStack, request_ids: list[str]) -> list[str]:
    """The stored errors of the challenger's calls for these requests, once the store has written them."""
    from sqlalchemy import create_engine, text

    engine = create_engine(gw.settings.store_database_url)
    query = text("SELECT error FROM predictions WHERE variant = 'challenger' AND request_id = :id")
    found: list[str] = []

    def written() -> bool:
        with engine.connect() as conn:
            found[:] = [row[0] for rid in request_ids for row in conn.execute(query, {"id": rid})]
        return len(found) >= len(request_ids)

    try:
        wait_for(written, 10)
    finally:
        engine.dispose()
    return found


def test_a_challenger_that_does_not_answer_is_not_promoted_even_with_force(gw: ServingStack) -> None:
    """Promoting a challenger whose probes fail would give every user a 503 and move the registry aliases to it:
    refused with 409, the rollout and the champion's answers unchanged, and promoted once it answers again."""
    assert gw.challenger is not None
    gw.set_rollout("ab", {"champion": 1, "challenger": 1})
    _signal_service(gw.challenger, signal.SIGSTOP)
    try:
        assert wait_for(lambda: _health(gw.url)["backends"]["challenger"]["up"] is False, 15)
        with TestClient(create_app(gw.settings, gateway=gw.url)) as web:  # the models page shows the warning
            page = web.get("/models").text
            assert 'id="gateway-warnings"' in page and "does not answer during the ab" in page, page
        r = httpx.post(
            f"{gw.url}/v1/rollout/promote", json={"force": True, "reason": "test"}, headers=gw.admin, timeout=30
        )
        assert r.status_code == 409 and "does not answer its health probes" in r.text, r.text
        view = httpx.get(f"{gw.url}/v1/rollout", timeout=10).json()
        assert view["state"]["champion"]["version"] == "1" and view["mode"] == "ab", view
    finally:
        _signal_service(gw.challenger, signal.SIGCONT)
    assert wait_for(lambda: _health(gw.url)["backends"]["challenger"]["up"], 15)
    view = gw.set_rollout("promote", {"reason": "it answers again"})
    assert view["state"]["champion"]["version"] == "2", view
    gw.set_rollout("rollback", {"reason": "test reset"})


def test_a_fallback_answer_stores_the_time_its_user_waited_for_the_failed_challenger_too(
    gw: ServingStack, jpeg: bytes
) -> None:
    """A user sent to a hung challenger waits until its probes give it up, then gets the champion's answer: that
    answer's stored latency (the monitoring page's) includes the wait, not the champion's few ms alone."""
    assert gw.challenger is not None
    gw.set_rollout("ab", {"champion": 0, "challenger": 1})
    _signal_service(gw.challenger, signal.SIGSTOP)
    try:
        t0 = time.perf_counter()
        r = httpx.post(f"{gw.url}/v1/predict", files={"image": ("t.jpg", jpeg, "image/jpeg")}, timeout=60)
        waited_ms = (time.perf_counter() - t0) * 1000
        assert r.status_code == 200 and r.json()["variant"] == "champion-fallback", r.text
        assert waited_ms > 1000, "the challenger failed at once: nothing was checked"
        rows = wait_for(lambda: httpx.get(f"{gw.url}/v1/predictions/{r.json()['request_id']}", timeout=10).json(), 10)
        served = next(row for row in rows if row["served"])
        assert served["latency_ms"] > 0.8 * waited_ms, (served["latency_ms"], waited_ms)
    finally:
        _signal_service(gw.challenger, signal.SIGCONT)
        gw.set_rollout("champion", {"reason": "test reset"})


def test_a_gateway_started_without_an_explainer_says_so_and_calls_nobody_on_its_port(tmp_path: Path) -> None:
    """`pyrocast up --no-explainer`: a heatmap was a 503 "the explainer ... does not answer ... until it answers
    again (GET /healthz says when)", though /healthz reports no explainer at all, after posting the tile to the
    explainer's port (another user's service there would have got it). The web app said "try again in a moment"."""
    import socket

    from pyrocast.serving.gateway import create_app as gateway_app
    from pyrocast.webapp.proxy import _error_from

    settings = stack_settings(tmp_path)
    settings.serving.explainer = False
    with socket.socket() as someone_else:  # whoever holds the explainer's port on a shared machine
        someone_else.bind(("127.0.0.1", settings.serving.explainer_port))
        someone_else.listen()
        someone_else.settimeout(0.2)
        with TestClient(gateway_app(settings)) as c:
            r = c.post("/v1/explain", json={"lat": 46.2, "lon": -73.4})
        with pytest.raises(TimeoutError):
            someone_else.accept()
    assert r.status_code == 503 and "no explainer runs with this gateway" in r.json()["detail"]["error"], r.text
    assert "healthz" not in r.text
    shown = _error_from(httpx.Response(503, json=r.json()), "explanation")
    assert shown.message.startswith("Heatmaps are off") and "moment" not in (shown.hint or ""), shown.to_dict()

"""The newcomer's path in a real browser: `rlm run` on a fresh data dir, then the Dagster UI.

One `rlm run` (seed the embedded stores, keep the embedded Redis up, `dagster dev`) serves the
whole module on a free port, in observe mode (RLM_CLEANUP_MODE=observe, as a first production
deploy runs): the demo's CRITICAL MongoDB makes the pressure sensor launch a cleanup that only
reports. Headless Debian Chromium, driven by Playwright, checks that this run shows what it would
have deleted, that the usage assets are listed, that a usage asset plots its numeric metadata and
that a dry-run cleanup launched from the Launchpad succeeds. Ctrl-C (SIGINT) must then stop
everything: no dagster process and no embedded redis-server may outlive it.

Screenshots, rlm's log and the measured start-up times go to artifacts/ (gitignored). With
RLM_UPDATE_UI_SCREENSHOT=1 the asset plot screenshot also replaces docs/ui.png, the README's
picture.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect, sync_playwright

from rlm_dagster.run_reports import run_report
from tests.services import free_port, require_or_skip

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "ui.png"
DOCS_SCREENSHOT_MAX_BYTES = 300_000
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1400, "height": 900}

LOCATION = "rlm_dagster.definitions"
REPOSITORY = "__repository__"
USAGE_ASSETS = ("redis", "qdrant", "minio", "mongodb", "history")
PLOTTED_ASSET = ("usage", "mongodb")
PLOTTED_METRIC = "usage_percentage"
COMMUNITY_DIALOG = "Join the Dagster community"
DRY_RUN_CONFIG = "ops:\n  cleanup:\n    config:\n      dry_run: true\n"

UI_TIMEOUT_S = 120
MATERIALIZATION_TIMEOUT_S = 240
RUN_TIMEOUT_S = 180
OBSERVED_RUN_TIMEOUT_S = 300
PRESSURE_SENSOR = "usage_pressure_sensor"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
STOP_TIMEOUT_S = 60
ORPHAN_GRACE_S = 10
# Connections and knobs of the caller's shell that would turn the embedded demo into something else.
FOREIGN_VARIABLES = (
    "DAGSTER_HOME",
    "REDIS_URL",
    "QDRANT_URL",
    "QDRANT_API_KEY",
    "MONGODB_URL",
    "MINIO_ENDPOINT",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "RLM_AUDIT_DIR",
    "RLM_DEMO",
    "RLM_CLEANUP_MODE",
)

MATERIALIZATIONS = """
query Materializations($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset { assetMaterializations(limit: 50) { timestamp runId } }
  }
}
"""
LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
SENSOR_RUNS = """
query SensorRuns {
  runsOrError(filter: {pipelineName: "cleanup_job", tags: [{key: "rlm/trigger", value: "sensor"}]}) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""
SENSOR_STATE = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) { __typename ... on Sensor { sensorState { id } } }
}
"""
STOP_SENSOR = """
mutation Stop($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
  }
}
"""
RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId jobName status tags { key value } runConfigYaml }
  }
}
"""


def _rlm_command() -> list[str]:
    """The `rlm` console script of this interpreter's environment (`make run` runs the same)."""
    script = Path(sys.executable).parent / "rlm"
    if script.exists():
        return [str(script), "run"]
    found = shutil.which("rlm")
    assert found, "the rlm console script is not installed (pip install -e '.[dev]')"
    return [found, "run"]


def _default_sigint() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and Python
    # then never turns SIGINT into KeyboardInterrupt; give rlm the Ctrl-C a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _matching_processes(tmp: Path, port: int) -> list[str]:
    """Live processes started for this UI: command line or cwd under tmp, or serving the port."""
    needles = (str(tmp), f"-p {port} ", f"--port {port} ")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue  # gone, or a zombie already reaped by its parent
        if cwd.startswith(str(tmp)) or any(needle in cmdline for needle in needles):
            found.append(f"pid {proc.name} cwd={cwd}: {cmdline[:300]}")
    return found


@dataclass
class RlmUI:
    """A running `rlm run` and what the tests measured about it."""

    process: subprocess.Popen[bytes]
    tmp: Path
    port: int
    log_path: Path
    started: float
    started_epoch: float
    timings: dict[str, float] = field(default_factory=dict)
    stopped: bool = False

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(  # noqa: S310 - loopback URL built here
            self.url("/graphql"), data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            payload: dict[str, Any] = json.load(response)
        assert "errors" not in payload, payload["errors"]
        data: dict[str, Any] = payload["data"]
        return data

    def materializations(self, path: tuple[str, ...]) -> list[dict[str, Any]]:
        node = self.graphql(MATERIALIZATIONS, path=list(path))["assetOrError"]
        assert node["__typename"] == "Asset", f"no asset {'/'.join(path)}: {node}"
        events: list[dict[str, Any]] = node["assetMaterializations"]
        return events

    def launch(self, job: str, tags: dict[str, str]) -> str:
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY,
                "jobName": job,
            },
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        result = self.graphql(LAUNCH_RUN, params=params)["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        run_id: str = result["run"]["runId"]
        return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        node: dict[str, Any] = self.graphql(RUN, runId=run_id)["runOrError"]
        assert node["__typename"] == "Run", node
        return node

    def sensor_runs(self) -> dict[str, tuple[str, dict[str, str]]]:
        """The cleanup runs the sensor launched: status and tags by run id."""
        node = self.graphql(SENSOR_RUNS)["runsOrError"]
        assert node["__typename"] == "Runs", node
        return {
            run["runId"]: (run["status"], {tag["key"]: tag["value"] for tag in run["tags"]})
            for run in node["results"]
        }

    def stop_sensor(self, name: str) -> None:
        """Stop a sensor, so that it launches no more runs while the other tests use the UI."""
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
        node = self.graphql(SENSOR_STATE, selector={**selector, "sensorName": name})
        state_id = node["sensorOrError"]["sensorState"]["id"]
        stopped = self.graphql(STOP_SENSOR, id=state_id)["stopSensor"]
        assert stopped["instigationState"]["status"] == "STOPPED", stopped

    def dagster_home(self) -> Path:
        """The instance `rlm run` created under its data dir."""
        return self.tmp / "data" / "dagster-home"

    def stop(self) -> list[str]:
        """Ctrl-C rlm, wait for it, and return the processes of this UI still alive."""
        if self.stopped:
            return _matching_processes(self.tmp, self.port)
        self.stopped = True
        begin = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                pytest.fail(f"rlm run ignored Ctrl-C for {STOP_TIMEOUT_S}s:\n{self.log_tail()}")
        self.timings["stop_seconds"] = round(time.monotonic() - begin, 1)
        deadline = time.monotonic() + ORPHAN_GRACE_S
        left = _matching_processes(self.tmp, self.port)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = _matching_processes(self.tmp, self.port)
        return left


def _wait(what: str, ui: RlmUI, timeout: float, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if ui.process.poll() is not None:
            pytest.fail(f"rlm run exited ({ui.process.returncode}) before {what}:\n{ui.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout}s:\n{ui.log_tail()}")
        time.sleep(1)


def _answers(ui: RlmUI) -> bool:
    try:
        with urllib.request.urlopen(ui.url("/server_info"), timeout=5) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _kill_leftovers(left: list[str]) -> None:
    for line in left:
        pid = int(line.split()[1])
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def rlm_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RlmUI]:
    """`rlm run` on a fresh data dir and a free port, as a newcomer starts it; Ctrl-C at the end."""
    if not CHROMIUM.exists():
        require_or_skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("rlm-ui")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_VARIABLES}
    env.update(
        RLM_DATA_DIR=str(tmp / "data"),
        RLM_PORT=str(port),
        RLM_CLEANUP_MODE="observe",
        PYTHONUNBUFFERED="1",
    )
    log_path = ARTIFACTS / "ui-rlm-run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            _rlm_command(),
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
    ui = RlmUI(process, tmp, port, log_path, time.monotonic(), time.time())
    try:
        _wait("UI", ui, UI_TIMEOUT_S, lambda: _answers(ui))
        ui.timings["ui_seconds"] = round(time.monotonic() - ui.started, 1)
        # One snapshot right away, so the plot has its two points a minute sooner than the
        # every-minute monitoring schedule alone would give.
        ui.launch("snapshot_job", {"rlm/trigger": "manual"})
        yield ui
    finally:
        left = ui.stop()
        (ARTIFACTS / "ui-timings.json").write_text(json.dumps(ui.timings, indent=2) + "\n")
        _kill_leftovers(left)
    assert ui.process.returncode == 0, ui.log_tail()
    assert not left, "left running after Ctrl-C:\n" + "\n".join(left)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless."""
    if not CHROMIUM.exists():
        require_or_skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def community_dialog_skipped(rlm_ui: RlmUI) -> None:
    """rlm marks Dagster's first-visit "Join the Dagster community" dialog seen for a newcomer."""
    assert rlm_ui.graphql("{ shouldShowNux }")["shouldShowNux"] is False


@pytest.fixture
def page(browser: Browser, community_dialog_skipped: None) -> Iterator[Page]:
    """A fresh page; should the community dialog come back, it is skipped before any action."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)
    tab = context.new_page()
    tab.add_locator_handler(
        tab.get_by_text(COMMUNITY_DIALOG), lambda: tab.get_by_role("button", name="Skip").click()
    )
    yield tab
    context.close()


def _screenshot(page: Page, name: str) -> Path:
    expect(page.get_by_text(COMMUNITY_DIALOG)).to_be_hidden()
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def test_an_observed_sensor_run_shows_what_it_would_have_deleted(rlm_ui: RlmUI, page: Page) -> None:
    """A cleanup the sensor launched for the demo's pressured stores (MongoDB CRITICAL, Qdrant HIGH),
    tagged rlm/mode=observe, deleted nothing; its run page shows the mode and, per store, the
    counts of its dry-run report."""
    _wait("a cleanup launched by the sensor", rlm_ui, OBSERVED_RUN_TIMEOUT_S, rlm_ui.sensor_runs)
    # Observe mode deletes nothing, so the pressure stays and every snapshot would bring new
    # runs: one tick's worth is enough, and the tests after this one get an idle queue.
    rlm_ui.stop_sensor(PRESSURE_SENSOR)
    _wait(
        "the sensor's cleanups to end",
        rlm_ui,
        OBSERVED_RUN_TIMEOUT_S,
        lambda: all(status in FINISHED for status, _ in rlm_ui.sensor_runs().values()),
    )
    runs = rlm_ui.sensor_runs()
    assert all(tags["rlm/mode"] == "observe" for _, tags in runs.values()), runs
    run_id = next(r for r, (status, _) in runs.items() if status == "SUCCESS")
    with dg.DagsterInstance.from_config(str(rlm_ui.dagster_home())) as instance:
        report = run_report(instance, run_id)
    assert report is not None and report["dry_run"] is True, report
    would_delete = report["deleted_counts"]
    total = sum(would_delete.values())
    assert total > 0, report  # the demo plants expired data in every store

    page.goto(rlm_ui.url(f"/runs/{run_id}"))
    expect(page.get_by_text("RUN_SUCCESS", exact=True)).to_be_visible()
    page.get_by_role("button", name="View tags and config").click()
    tags = page.get_by_role("dialog").filter(has_text="Tags")
    expect(tags).to_contain_text("rlm/mode: observe")
    expect(tags).to_contain_text("rlm/trigger: sensor")
    tags.get_by_role("button", name="OK").click()

    shown = _metadata_dialog(page, "observe_would_delete", "[Show JSON]")
    counts = json.loads(shown.inner_text().split("observe_would_delete", 1)[1].split("Copy")[0])
    assert counts == would_delete
    _screenshot(page, "ui-observe-would-delete.png")
    shown.get_by_role("button", name="Close").click()
    note = _metadata_dialog(page, "observe_note", "[Show Markdown]")
    expect(note).to_contain_text(f"would have deleted {total} items")


def _metadata_dialog(page: Page, label: str, action: str) -> Locator:
    """Open the dialog behind a metadata entry of the run's event log (JSON, Markdown)."""
    row = page.locator("tr").filter(has=page.get_by_text(label, exact=True))
    expect(row).to_have_count(1)
    row.get_by_text(action, exact=True).click()
    dialog = page.get_by_role("dialog").filter(has_text=label)
    expect(dialog).to_be_visible()
    return dialog


def test_the_usage_assets_are_listed(rlm_ui: RlmUI, page: Page) -> None:
    page.goto(rlm_ui.url("/assets"))
    for name in USAGE_ASSETS:
        link = page.locator(f'a[href="/assets/usage/{name}"]')
        expect(link).to_be_visible()
        expect(link).to_contain_text(f"usage / {name}")
    # Every row sits in the `usage` asset group.
    groups = page.locator("a[href^='/asset-groups~group%3A\"usage\"/']")
    expect(groups).to_have_count(len(USAGE_ASSETS))
    page.wait_for_timeout(1500)  # let the status column settle for the picture
    _screenshot(page, "ui-assets.png")


def test_a_dry_run_cleanup_from_the_launchpad_succeeds(rlm_ui: RlmUI, page: Page) -> None:
    page.goto(rlm_ui.url(f"/locations/{LOCATION}/jobs/cleanup_job/playground"))
    editor = page.locator(".CodeMirror")
    expect(editor).to_contain_text("cleanup")  # the scaffolded config has loaded
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(DRY_RUN_CONFIG)
    expect(editor).to_contain_text("dry_run: true")
    expect(editor).not_to_contain_text("dry_run: false")
    expect(page.get_by_text("No errors", exact=True)).to_be_visible()
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url("**/runs/*")
    run_id = page.url.rsplit("/runs/", 1)[1].split("?")[0]

    outcome = (
        page.get_by_text("Success", exact=True)
        .or_(page.get_by_text("Failure", exact=True))
        .or_(page.get_by_text("Canceled", exact=True))
    )
    expect(outcome.first).to_be_visible(timeout=RUN_TIMEOUT_S * 1000)
    expect(page.get_by_text("RUN_SUCCESS", exact=True)).to_be_visible()
    _screenshot(page, "ui-launchpad-success.png")

    run = rlm_ui.run(run_id)
    assert run["jobName"] == "cleanup_job"
    assert run["status"] == "SUCCESS", run
    tags = {tag["key"]: tag["value"] for tag in run["tags"]}
    assert any(key.startswith("dagster/") for key in tags), tags
    config = yaml.safe_load(run["runConfigYaml"])
    assert config["ops"]["cleanup"]["config"]["dry_run"] is True, config


def test_a_usage_asset_plots_its_numeric_metadata(rlm_ui: RlmUI, page: Page) -> None:
    _wait(
        "two materializations of usage/mongodb",
        rlm_ui,
        MATERIALIZATION_TIMEOUT_S,
        lambda: len(rlm_ui.materializations(PLOTTED_ASSET)) >= 2,
    )
    page.goto(rlm_ui.url("/assets/" + "/".join(PLOTTED_ASSET)))
    expect(page.get_by_text(PLOTTED_METRIC, exact=True).first).to_be_visible()
    page.get_by_role("button", name="Plots").click()
    title = page.get_by_text(PLOTTED_METRIC, exact=True)
    expect(title).to_have_count(1)
    chart = title.locator("xpath=../..").locator("canvas")
    expect(chart).to_be_visible()
    chart.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)  # the chart animates its line in
    drawn = chart.evaluate(
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
        ".filter((v, i) => i % 4 === 3 && v > 0).length"
    )
    assert drawn > 500, f"the {PLOTTED_METRIC} chart is blank ({drawn} painted pixels)"
    shot = _screenshot(page, "ui-plot.png")
    if os.environ.get("RLM_UPDATE_UI_SCREENSHOT") == "1":
        assert shot.stat().st_size < DOCS_SCREENSHOT_MAX_BYTES
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)
    # Measured with the extra snapshot_job the fixture launches (a newcomer waits for the
    # schedule's first minute boundary instead).
    first_ms = min(float(event["timestamp"]) for event in rlm_ui.materializations(PLOTTED_ASSET))
    rlm_ui.timings["first_materialization_seconds"] = round(
        first_ms / 1000 - rlm_ui.started_epoch, 1
    )


def test_ctrl_c_stops_everything(rlm_ui: RlmUI) -> None:
    left = rlm_ui.stop()
    _kill_leftovers(left)
    assert rlm_ui.process.returncode == 0, rlm_ui.log_tail()
    assert not left, "left running after Ctrl-C:\n" + "\n".join(left)

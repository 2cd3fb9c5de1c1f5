"""Progress per test file: one line as each file finishes, instead of a wall of dots.

With pytest-xdist the files finish out of order on several workers; the controller counts
each file's tests (from the workers' collections) and prints the file's line when its last
test's teardown is reported. Failures and errors still show at once, as pytest prints them.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

import pytest


class FileProgress:
    """Counts each file's finished tests and writes a line when a file is done."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.expected: collections.Counter[str] = collections.Counter()
        self.finished: collections.Counter[str] = collections.Counter()
        self.outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.seconds: collections.Counter[str] = collections.Counter()
        self.files_done = 0
        self.started = time.monotonic()

    def expect(self, nodeids: list[str]) -> None:
        if self.expected:  # each xdist worker reports the same collection
            return
        self.expected.update(nodeid.split("::", 1)[0] for nodeid in nodeids)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.expect([item.nodeid for item in items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.expect(ids)

    def pytest_report_teststatus(self, report: pytest.TestReport) -> tuple[str, str, str] | None:
        # A passing test prints nothing (its file's line will); the rest keep their letters.
        if report.when == "call" and report.passed:
            return "passed", "", "PASSED"
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        path = report.nodeid.split("::", 1)[0]
        self.seconds[path] += report.duration
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[path][report.outcome] += 1
        elif report.when == "teardown" and report.failed:
            self.outcomes[path]["error"] += 1
        if report.when != "teardown":
            return
        self.finished[path] += 1
        if self.finished[path] == self.expected.get(path):
            self.files_done += 1
            counts = ", ".join(f"{n} {what}" for what, n in sorted(self.outcomes[path].items()))
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(
                    f"[{self.files_done:3d}/{len(self.expected)} files"
                    f" {time.monotonic() - self.started:6.1f}s] {path}: {counts}"
                    f" ({self.seconds[path]:.1f}s)"
                )


@pytest.fixture(autouse=True)
def _no_zygote_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that made a state directory leaves no shim zygote serving it afterwards."""
    root = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if root is not None:
        from support.zygotes import stop_zygotes_under

        stop_zygotes_under(root)


def pytest_configure(config: pytest.Config) -> None:
    # Workers report to the controller; only the process that owns the terminal prints.
    if not hasattr(config, "workerinput") and config.option.verbose <= 0:
        config.pluginmanager.register(FileProgress(config), "hakuriver-file-progress")

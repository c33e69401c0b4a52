"""pytest wiring for procsnap's tests.

* The test process becomes a child subreaper at start-up, so processes that
  ``procsnap restore -d`` leaves behind become our children.
* ``targets`` starts target programs and kills/reaps them at teardown, even
  when the test failed.
* Tests marked ``root`` are skipped, with the reason, only when not root.
* Nothing of ours is left on the host: a test leaving a mount or a named
  cgroup hierarchy fails (each test), and the run fails if it left an nft
  table, a network namespace, a network-lock iptables rule or a cgroup
  (once, at the end).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import helpers  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    helpers.set_child_subreaper()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (ptrace, clone3 set_tid, setresuid): run as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[helpers.TargetFactory]:
    """Factory: ``targets.start("counter", path)`` -> helpers.Target."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    factory = helpers.TargetFactory(workdir)
    yield factory
    notes = factory.cleanup()
    assert not notes, "; ".join(notes)


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def no_stray_children() -> Iterator[None]:
    """After each test, nothing the test (or procsnap) started may be left.

    The ``targets`` fixture has already killed what it tracks; anything still
    parented to us here is an orphan of a procsnap run (we are its
    subreaper).  It is ours by descent, so it is killed, and the test fails.
    """
    before = helpers.children_of(os.getpid())
    yield
    helpers.reap()
    stray = {p: helpers.proc_cmdline(p)
             for p in helpers.children_of(os.getpid()) - before}
    for pid in stray:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        helpers.wait_gone(pid, 10)
    assert not stray, f"processes left behind: {stray}"


@pytest.fixture(autouse=True)
def no_stray_mounts_or_hierarchies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After each test, no mount below the run's temporary dirs and no named
    cgroup hierarchy of this run (named with its pid) alive unmounted: both
    cheap reads of /proc.  What is found is removed, and the test fails."""
    if os.geteuid() != 0:
        yield
        return
    base = tmp_path_factory.getbasetemp()
    before = helpers.mounts_under(base), helpers.stale_hierarchies(mine=True)
    yield
    mounts = helpers.mounts_under(base) - before[0]
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], timeout=30)
    stale = helpers.stale_hierarchies(mine=True) - before[1]
    for name in stale:
        helpers.remove_stale_hierarchy(name)
    assert not mounts and not stale, (
        f"left on the host: mounts {sorted(mounts)}, cgroup hierarchies (unmounted) "
        f"{sorted('name=' + n for n in stale)}")


@pytest.fixture(scope="session", autouse=True)
def no_host_leftovers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the run, nothing of ours it made is left on the host: nft
    tables, network namespaces, network-lock iptables rules, cgroups,
    named hierarchies, mounts (helpers.host_leftovers) that are this run's
    (helpers._this_run: by its pid or its targets' pids), so neither what an
    earlier run left nor what a run at the same time holds fails this one."""
    if os.geteuid() != 0:
        yield
        return
    base = tmp_path_factory.getbasetemp()
    before = helpers.host_leftovers(base)
    yield
    left = helpers.new_host_leftovers(before, base)
    assert not left, "left on the host by this run: " + \
        "; ".join(sorted(left))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """In CI (CI=true) a skipped test is a failed one: .ci/run installs
    everything the tests need, so a skip there means a missing install step
    that would otherwise hide an untested feature."""
    outcome = yield
    report = outcome.get_result()
    # criu_binary: tests against a real CRIU, which CI cannot have (not
    # packaged for this kernel): their skip names PROCSNAP_CRIU
    if os.environ.get("CI") == "true" and report.skipped and "xfail" not in report.keywords \
            and not ("criu_binary" in report.keywords and not os.environ.get("PROCSNAP_CRIU")):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may be skipped: {report.longrepr}"

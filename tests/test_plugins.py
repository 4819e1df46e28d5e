"""hydra_plugins/mnist_exp as any Hydra app sees them: Hydra's own test suites for launchers, run against the
parallel launcher (alone, and under the grid sweeper) on Hydra's test apps, which know nothing of mnist-exp."""

from __future__ import annotations

from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from hydra.version import VersionBase
from packaging.version import Version
from pytest import fixture, mark

# Hydra's test apps leave version_base unset, so Hydra warns in each of their jobs: theirs, not ours to fix.
pytestmark = mark.filterwarnings("ignore:Future Hydra versions will no longer change working directory:UserWarning")


@fixture(autouse=True)
def hydra_defaults(hydra_restore_singletons):
    """Hydra's test apps expect what Hydra does without a version_base (1.1: each job runs in its own folder);
    test files run before in this process chose 1.3. The singletons are restored after each test."""
    VersionBase.instance().setbase(Version("1.1"))


def test_hydra_discovers_the_plugins():
    found = {f"{c.__module__}.{c.__name__}" for kind in (Launcher, Sweeper) for c in Plugins.instance().discover(kind)}
    assert {f"hydra_plugins.mnist_exp.{name}" for name in ("ParallelLauncher", "GridSweeper", "OptunaSweeper")} <= found


# Under the grid sweeper the jobs run in the launcher's own process (workers=1): what is checked there is the sweeper,
# and the worker processes (a second of start-up each) are checked under Hydra's basic sweeper.
@mark.parametrize(
    "launcher_name, overrides", [("parallel", []), ("parallel", ["hydra/sweeper=grid", "hydra.launcher.workers=1"])]
)
class TestParallelLauncher(LauncherTestSuite):
    pass


@mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({}, ["-m", "hydra/job_logging=hydra_debug", "hydra/job_logging=disabled", "hydra/launcher=parallel"])],
)
class TestParallelLauncherIntegration(IntegrationTestSuite):
    pass

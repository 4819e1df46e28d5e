"""Hydra instantiates launchers and sweepers only from classes defined under the hydra_plugins namespace: this is
how it finds mnist_exp's launcher (conf/hydra/launcher/parallel.yaml, code in mnist_exp/launcher.py) and
sweepers (conf/hydra/sweeper/grid.yaml and optuna.yaml, code in mnist_exp/grid.py and search.py)."""

from mnist_exp import grid, launcher, search


class ParallelLauncher(launcher.ParallelLauncher):
    """The default launcher of `train.py -m`: mnist_exp.launcher.ParallelLauncher, registered here."""


class OptunaSweeper(search.OptunaSweeper):
    """hydra/sweeper=optuna: mnist_exp.search.OptunaSweeper, registered here."""


class GridSweeper(grid.GridSweeper):
    """hydra/sweeper=grid, the default: mnist_exp.grid.GridSweeper, registered here."""

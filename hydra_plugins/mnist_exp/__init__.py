"""Hydra instantiates launchers only from classes defined under the hydra_plugins namespace: this is
how it finds mnist_exp's own (conf/hydra/launcher/parallel.yaml), whose code is mnist_exp/launcher.py."""

from mnist_exp import launcher


class ParallelLauncher(launcher.ParallelLauncher):
    """The default launcher of `train.py -m`: mnist_exp.launcher.ParallelLauncher, registered here."""

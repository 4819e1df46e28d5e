"""The grid sweeper's pieces without training: the jobs it lists, the fast configs the launch callback checks
and the parallel launcher costs, and the launch it refuses (train.py itself: tests/test_reliability.py)."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from mnist_exp import grid, schema, validation


@pytest.fixture(scope="module")
def hydra_app():
    """Hydra initialized on conf/, as in train.py's process: what grid composes through."""
    schema.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


@pytest.mark.parametrize(
    "params, arguments",
    [
        ({}, ["model=lenet5,mlp", "trainer.seed=range(0,3)", "trainer.epochs=2"]),
        ({"model": "lenet5,mlp", "trainer.seed": "0,1"}, ["model=mlp", "regularizer=choice(l2,none)"]),
        ({}, ["'regularizer=[l2,dropout],none'", "+foo=1"]),
    ],
)
def test_a_grid_lists_the_jobs_hydras_basic_sweeper_lists_in_its_order(params, arguments):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the reference: Hydra's own

    arguments = [a.strip("'") for a in arguments]
    lines = [f"{key}={value}" for key, value in params.items()] + arguments
    (expected,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(lines), None)

    assert grid.expand(arguments, params) == expected


def test_an_interval_is_refused_by_the_grid_and_left_to_a_search():
    with pytest.raises(Exception, match="a grid takes lists"):
        grid.expand(["optimizer.lr=interval(0.001,0.1)", "model=lenet5,mlp"])

    assert grid.expand(["optimizer.lr=interval(0.001,0.1)", "model=lenet5,mlp"], strict=False) == [
        ["model=lenet5"],
        ["model=mlp"],
    ]


def test_a_jobs_fast_config_is_the_one_hydra_composes(hydra_app):
    configs = grid.JobConfigs("train", hydra_app)
    jobs = [
        ["model=mlp", "trainer.seed=3", "data.limit_train=300"],
        ["regularizer=[l2,dropout]", "regularizer.dropout.p=0.25", "optimizer=adam", "optimizer.lr=0.002"],
        ["experiment=course_grid", "model=mlp", "trainer.seed=1", "+trainer.extra=1"],
        ["scheduler=step", "++data.validation_size=500", "mlflow.extends=abc"],
    ]
    for job in jobs:
        expected = compose("train", job)
        OmegaConf.resolve(expected)

        assert OmegaConf.to_container(configs(job)) == OmegaConf.to_container(expected), job


def test_a_launch_with_a_refused_job_is_refused_each_problem_once_with_its_count(hydra_app):
    config = compose("train", return_hydra_config=True)
    with open_dict(config):
        config.hydra.overrides.task = ["optimizer.lr=-1,0.01", "model=lenet5,mlp", "trainer.epochs=2"]

    (problem,) = validation.check_launch(config, sweeping=True)

    assert problem.startswith("optimizer.lr=-1.0 is out of range: must be > 0 (in 2 of 4 jobs, e.g. ")
    assert "optimizer.lr=-1" in problem and "trainer.epochs" not in problem, "the example names what is swept"
    with open_dict(config):
        config.hydra.overrides.task = ["model=lenet5,mlp", "trainer.epochs=2"]
    assert validation.check_launch(config, sweeping=True) == []

"""The config: every shipped option composes and validates; typos and wrong types are Hydra's
errors at composition; values out of range are ConfigErrors that name the key."""

from __future__ import annotations

import contextlib
import itertools
import re
import subprocess
import sys

import pytest
from conftest import CONF_DIR, REPO
from hydra.errors import ConfigCompositionException, MissingConfigException

from mnist_exp.validation import ConfigError, validate


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


GROUPS = ("model", "regularizer", "optimizer", "scheduler", "data")


def pairwise(groups: list[list[str]]) -> list[tuple[str, ...]]:
    """Combinations holding every pair of options of two groups at least once (a covering array of strength 2),
    far fewer than all of them: each regularizer with each scheduler once, the other groups' options in turn."""
    model, regularizer, optimizer, scheduler, data = groups
    count = len(regularizer) * len(scheduler)
    return [
        (
            model[k % len(model)],
            regularizer[k // len(scheduler)],
            optimizer[(k // len(model)) % len(optimizer)],
            scheduler[k % len(scheduler)],
            data[k % len(data)],
        )
        for k in range(count)
    ]


# Each option's file writes its own group's node, and no rule of the schema reads more than two groups (a cross
# check reads its own node and one other: onecycle the optimizer's momentum, cosine its lr), so a combination can
# only fail through a pair of its options: every pair, not all 240 combinations (0.25 s of Hydra each).
COMBINATIONS = pairwise([options(group) for group in GROUPS])


def test_the_option_lists_are_read_from_conf():
    # Guards the parametrization below against silently testing nothing.
    assert options("model") == ["lenet5", "lenet5_32", "mlp"]
    assert options("regularizer") == [
        "augment",
        "batchnorm",
        "dropout",
        "early_stopping",
        "elastic",
        "ema",
        "l2",
        "label_smoothing",
        "none",
        "swa",
    ]
    assert options("optimizer") == ["adam", "sgd"]
    assert options("scheduler") == ["cosine", "none", "onecycle", "step"]
    assert options("data") == ["mnist"]
    assert options("experiment") == ["course_grid", "lenet5_best", "mlp_best", "regularizer_combos", "tune"]
    assert options("hparams_search") == ["lenet5_optuna"]


def test_the_combinations_hold_every_pair_of_options_of_two_groups():
    for (i, first), (j, second) in itertools.combinations(enumerate(GROUPS), 2):
        pairs = {(combination[i], combination[j]) for combination in COMBINATIONS}
        assert pairs == set(itertools.product(options(first), options(second))), (first, second)
    largest = sorted(len(options(group)) for group in GROUPS)[-2:]
    assert len(COMBINATIONS) == largest[0] * largest[1], "no more than the two largest groups' pairs need"


@pytest.mark.parametrize("sweep", [[], ["-m"]], ids=["run", "sweep"])
def test_a_config_error_is_answered_without_importing_mlflow(tmp_path, sweep):
    """train.py's promise: a bad value is refused before MLflow (seconds of imports) is loaded."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "train.py"), *sweep, "trainer.epochs=0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "train.py: error: trainer.epochs=0 is out of range" in done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "mlflow" not in imported and not list(tmp_path.iterdir())  # no store, no output folder


@pytest.mark.parametrize(GROUPS, COMBINATIONS, ids=["/".join(c) for c in COMBINATIONS])
def test_every_pair_of_options_composes_and_validates(compose, model, regularizer, optimizer, scheduler, data):
    watched = ["data.validation_size=100"] if regularizer == "early_stopping" else []  # it needs one to watch
    cfg = compose(
        [
            f"model={model}",
            f"regularizer={regularizer}",
            f"optimizer={optimizer}",
            f"scheduler={scheduler}",
            f"data={data}",
            *watched,
        ]
    )

    validate(cfg)

    assert cfg.model.name == model and cfg.optimizer.name == optimizer
    assert list(cfg.regularizer) == ([] if regularizer == "none" else [regularizer])
    assert cfg.scheduler.get("name", "none") == scheduler


@pytest.mark.parametrize("group", ["experiment", "hparams_search"])
def test_every_study_option_composes_and_validates(compose, group):
    for option in options(group):
        validate(compose([f"{group}={option}"]))


STUDIES = [(group, option) for group in ("experiment", "hparams_search") for option in options(group)]


def swept_values(key: str, value) -> list[str]:
    """What the sweeper tries for one entry of hydra.sweeper.params, as override values: each choice of
    a list (a,b or choice(...)) or range, both ends of an interval (Optuna's), or the one value given."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    assert value is not None and str(value).strip() not in ("", "[]", "''"), f"{key}: an empty option list"
    (override,) = OverridesParser.create().parse_overrides([f"{key}={value}"])
    swept = override.value()
    if isinstance(swept, IntervalSweep):
        assert swept.start < swept.end, f"{key}={value}: an empty interval"
        assert "log" not in swept.tags or swept.start > 0, f"{key}={value}: a log scale must start above 0"
        return [str(swept.start), str(swept.end)]
    if override.is_sweep_override():
        values = list(override.sweep_string_iterator())
        assert values, f"{key}={value}: an empty option list"
        return values
    return [override.get_value_element_as_str()]


@contextlib.contextmanager
def job_configs():
    """The configs of a launch's jobs as train.py checks them before any runs (mnist_exp.grid.JobConfigs: Hydra
    composes each distinct choice of config groups once, and a job's values are applied as Hydra applies them)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mnist_exp import grid, schema

    schema.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield grid.JobConfigs("train", GlobalHydra.instance().config_loader())


@pytest.mark.parametrize(("group", "option"), STUDIES, ids=[f"{g}={o}" for g, o in STUDIES])
def test_every_study_sweeps_only_values_that_compose(compose_hydra, group, option):
    """Composed with Hydra's own config, as train.py gets it: every value the file's sweeper would
    try composes and validates, and each option a group sweep names is a file of that group."""
    hydra_cfg = compose_hydra([f"{group}={option}"])
    params = hydra_cfg.hydra.sweeper.params

    assert str(hydra_cfg.hydra.mode) == "RunMode.MULTIRUN", "a study file is a sweep (train.py needs no -m)"
    assert params, f"conf/{group}/{option}.yaml sweeps nothing"
    with job_configs() as configs:
        for key, value in params.items():
            values = swept_values(str(key), value)
            if (CONF_DIR / str(key)).is_dir():  # a config group: each value names its files
                for choice in values:
                    for name in choice.strip("[]").split(","):
                        assert name and (CONF_DIR / str(key) / f"{name}.yaml").is_file(), (
                            f"conf/{group}/{option}.yaml: {key}={choice} names no file conf/{key}/{name}.yaml"
                        )
            for choice in values:
                job = [f"{group}={option}", f"{key}={choice}"]
                validate(configs(job), job)


def test_regularizers_compose_into_one_node(compose):
    cfg = compose(["regularizer=[l2,dropout]"])

    validate(cfg)
    assert set(cfg.regularizer) == {"l2", "dropout"}
    assert cfg.regularizer.l2.weight_decay > 0 and 0 < cfg.regularizer.dropout.p < 1


@pytest.mark.parametrize("overrides", [["regularizer=[l2,l2]"], ["regularizer=[dropout, l2,dropout]", "model=mlp"]])
def test_a_regularizer_named_twice_is_refused_though_hydra_merges_it_into_one(compose, overrides):
    cfg = compose(overrides)
    assert list(cfg.regularizer) in (["l2"], ["dropout", "l2"])  # nothing in the config shows the repeat

    with pytest.raises(ConfigError) as error:
        validate(cfg, overrides)  # the job passes Hydra's overrides.task: these strings

    repeated = "l2" if overrides[0].count("l2") == 2 else "dropout"
    assert f"names {repeated} more than once" in str(error.value) and "\n" not in str(error.value)
    validate(compose(["regularizer=[l2,dropout]"]), ["regularizer=[l2,dropout]"])


# --- Hydra rejects these while composing ---


def test_misspelled_option_lists_the_real_ones(compose):
    with pytest.raises(MissingConfigException) as error:
        compose(["model=lenet"])
    assert "Could not find 'model/lenet'" in str(error.value)
    assert "lenet5" in str(error.value) and "mlp" in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.epochs=abc"], "trainer.epochs=abc"),
        (["optimizer.lr=fast"], "optimizer.lr=fast"),
        (["optimizer.nesterov=maybe"], "optimizer.nesterov=maybe"),
        (["data.limit_train=half"], "data.limit_train=half"),
    ],
)
def test_wrong_type_fails_during_composition(compose, overrides, message):
    with pytest.raises(ConfigCompositionException, match=message):
        compose(overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.epoch=3"],  # typo of trainer.epochs
        ["model=lenet5", "model.hidden_layers=3"],  # only the MLP has hidden layers
        ["optimizer=sgd", "optimizer.betas=[0.9,0.99]"],  # an Adam key on SGD
        ["regularizer=none", "regularizer.dropout.p=0.3"],  # a regularizer that is not selected
    ],
    ids=["typo", "key of another model", "key of another optimizer", "unselected regularizer"],
)
def test_unknown_key_fails_during_composition(compose, overrides):
    key = overrides[-1].split("=")[0]
    with pytest.raises(ConfigCompositionException, match=f"Could not override '{key}'"):
        compose(overrides)


# --- values out of range ---

OUT_OF_RANGE = [
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer=adam", "optimizer.lr=-0.001"], "optimizer.lr"),
    (["optimizer.momentum=1.0"], "optimizer.momentum"),
    (["optimizer=adam", "optimizer.betas=[0.9,1.0]"], "optimizer.betas"),
    (["optimizer=adam", "optimizer.betas=[0.9]"], "optimizer.betas"),
    (["regularizer=dropout", "regularizer.dropout.p=1.0"], "regularizer.dropout.p"),
    (["regularizer=dropout", "regularizer.dropout.p=-0.1"], "regularizer.dropout.p"),
    (["regularizer=l2", "regularizer.l2.weight_decay=-0.0001"], "regularizer.l2.weight_decay"),
    (["regularizer=batchnorm", "regularizer.batchnorm.momentum=0"], "regularizer.batchnorm.momentum"),
    (["regularizer=augment", "regularizer.augment.scale=[1.2,0.9]"], "regularizer.augment.scale"),
    (["regularizer=augment", "regularizer.augment.scale=[0,1.1]"], "regularizer.augment.scale"),
    (["regularizer=augment", "regularizer.augment.degrees=181"], "regularizer.augment.degrees"),
    (["regularizer=augment", "regularizer.augment.translate=1.0"], "regularizer.augment.translate"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["trainer.eval_batch_size=-5"], "trainer.eval_batch_size"),
    (["trainer.seed=-1"], "trainer.seed"),
    (["trainer.threads=0"], "trainer.threads"),
    (["trainer.device=gpu"], "trainer.device"),
    (["data.source=ftp"], "data.source"),
    (["data.limit_train=0"], "data.limit_train"),
    (["data.limit_test=-3"], "data.limit_test"),
    (["data.std=0"], "data.std"),
    (["model.activation=swish"], "model.activation"),
    (["model=mlp", "model.hidden_layers=0"], "model.hidden_layers"),
    (["model.name=resnet"], "model.name"),
    (["model=lenet5_32", "model.pooling=median"], "model.pooling"),
    (["model=mlp", "model.parity_with=alexnet"], "model.parity_with"),
    (["regularizer=label_smoothing", "regularizer.label_smoothing.epsilon=1.0"], "regularizer.label_smoothing.epsilon"),
    (
        ["regularizer=early_stopping", "data.validation_size=10", "regularizer.early_stopping.patience=0"],
        "regularizer.early_stopping.patience",
    ),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size"),
    (["scheduler=step", "scheduler.gamma=1.5"], "scheduler.gamma"),
    (["scheduler=cosine", "scheduler.warmup_epochs=10"], "scheduler.warmup_epochs"),
    (["scheduler=cosine", "scheduler.min_lr=0.5"], "scheduler.min_lr"),
    (["scheduler=onecycle", "scheduler.pct_start=1.0"], "scheduler.pct_start"),
    (["scheduler=onecycle", "scheduler.max_lr=0"], "scheduler.max_lr"),
    (["mlflow.experiment= "], "mlflow.experiment"),
]


@pytest.mark.parametrize(("overrides", "key"), OUT_OF_RANGE, ids=[" ".join(o) for o, _ in OUT_OF_RANGE])
def test_out_of_range_value_is_a_config_error_naming_the_key(compose, overrides, key):
    cfg = compose(overrides)  # the types are fine: Hydra accepts it

    with pytest.raises(ConfigError) as error:
        validate(cfg)

    value = overrides[-1].split("=", 1)[1]
    assert f"{key}=" in str(error.value) and "out of range" in str(error.value)
    assert value.strip("[]").split(",")[0] in str(error.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["regularizer=dropout", "regularizer.dropout.p=0.0"],
        ["optimizer.momentum=0.0"],
        ["regularizer=augment", "regularizer.augment.scale=[1.0,1.0]", "regularizer.augment.degrees=180"],
        ["regularizer=l2", "regularizer.l2.weight_decay=0"],
        ["regularizer=batchnorm", "regularizer.batchnorm.momentum=1.0"],
        ["trainer.device=cuda:1"],
        ["trainer.threads=1", "data.limit_train=1", "data.limit_test=1"],
        ["trainer.seed=0"],
    ],
)
def test_values_on_the_edge_of_their_range_are_accepted(compose, overrides):
    validate(compose(overrides))


def test_every_problem_is_reported_at_once(compose):
    cfg = compose(["optimizer.lr=0", "trainer.epochs=0", "data.source=ftp"])
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert all(key in str(error.value) for key in ("optimizer.lr=0", "trainer.epochs=0", "data.source=ftp"))


def test_an_unknown_regularizer_key_smuggled_in_with_plus_is_refused(compose):
    cfg = compose(["+regularizer.mixup.alpha=0.2"])  # '+' lets Hydra add keys the schema does not know
    with pytest.raises(ConfigError, match="regularizer.mixup is not a regularizer"):
        validate(cfg)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["+trainer.epoch=5"], "trainer.epoch"),  # a typo of trainer.epochs
        (["model=mlp", "+model.hidden_width=64"], "model.hidden_width"),
        (["optimizer=adam", "+optimizer.momentum=0.9"], "optimizer.momentum"),  # an SGD key on Adam
        (["+seed=1"], "seed"),
    ],
)
def test_a_key_no_schema_knows_added_with_plus_is_refused(compose, overrides, key):
    with pytest.raises(ConfigError, match=f"{re.escape(key)} is not a setting"):
        validate(compose(overrides))


def test_train_help_lists_every_group_and_option_the_readme_lists():
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )

    assert result.returncode == 0, result.stderr
    for group in ("model", "regularizer", "optimizer", "data"):
        assert f"{group}: {', '.join(options(group))}" in result.stdout
    table = re.findall(r"^\| `([a-z_/]+)` \|", (REPO / "README.md").read_text(), re.MULTILINE)
    assert len(table) == 11, "the README's table of config groups"
    listed = {line.split(":")[0] for line in result.stdout.splitlines()}
    assert set(table) <= listed, f"--help omits {sorted(set(table) - listed)}"


def test_early_stopping_without_a_validation_split_says_which_setting_to_give(compose):
    with pytest.raises(
        ConfigError, match=r"regularizer=early_stopping watches the validation loss: .*data\.validation_size=N"
    ):
        validate(compose(["regularizer=early_stopping"]))


def test_onecycle_cannot_cycle_a_momentum_of_zero(compose):
    with pytest.raises(ConfigError, match="scheduler.cycle_momentum=true cycles SGD's momentum, which is 0"):
        validate(compose(["scheduler=onecycle", "optimizer.momentum=0"]))
    validate(compose(["scheduler=onecycle", "optimizer.momentum=0", "scheduler.cycle_momentum=false"]))


# Identity hashes of the course's configs: new options at their defaults keep runs' identity. The MLP's are
# record version 2's (model.parity_with counted; record.migrate re-tags stored runs of version 1).
COURSE_IDENTITIES = {
    ("lenet5", "none"): "2c7f3daf77927599",
    ("lenet5", "l2"): "aa13ae2b8530c0d2",
    ("lenet5", "dropout"): "2c0f18d93d30d023",
    ("lenet5", "batchnorm"): "a9cc400fa5899dc1",
    ("lenet5", "augment"): "e3cd3514bcb15b6d",
    ("mlp", "none"): "f089f0a64bb0d0c5",
    ("mlp", "l2"): "8f95e75ec01e97fc",
    ("mlp", "dropout"): "39b82beee3c1ff6b",
    ("mlp", "batchnorm"): "bce7ff314ae7291c",
    ("mlp", "augment"): "5ce3aca9e883a459",
}


@pytest.mark.parametrize(("model", "regularizer"), list(COURSE_IDENTITIES))
def test_existing_runs_keep_their_identity(compose, model, regularizer):
    from mnist_exp.record import config_hash, flat_params

    cfg = compose([f"model={model}", f"regularizer={regularizer}"])

    assert config_hash(flat_params(cfg)) == COURSE_IDENTITIES[model, regularizer]


def expanded_jobs(compose_hydra, experiment: str) -> list[list[str]]:
    """The jobs the grid sweeper makes of an experiment file's sweeper params (Hydra's basic sweeper's:
    tests/test_grid.py)."""
    from mnist_exp.grid import expand

    return expand([], dict(compose_hydra([f"experiment={experiment}"]).hydra.sweeper.params))


@pytest.fixture(scope="module")
def compose_hydra():
    from hydra import compose, initialize_config_dir

    from mnist_exp import schema

    schema.register()

    def _compose(overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)

    return _compose


def test_regularizer_combos_is_lenet5_with_none_each_single_and_every_pair_three_seeds(compose_hydra):
    jobs = expanded_jobs(compose_hydra, "regularizer_combos")

    regularizers = {job[0].split("=", 1)[1] for job in jobs}
    singles = {"l2", "dropout", "batchnorm", "augment"}
    pairs = {f"[{a},{b}]" for a, b in itertools.combinations(["l2", "dropout", "batchnorm", "augment"], 2)}
    assert regularizers == {"none"} | singles | pairs
    assert len(jobs) == 11 * 3
    with job_configs() as configs:
        for job in jobs:  # every job composes and validates, all trained alike on a validation split
            cfg = configs(["experiment=regularizer_combos", *job])
            validate(cfg, job)
            assert (cfg.model.name, cfg.scheduler.name, cfg.trainer.epochs, cfg.data.validation_size) == (
                "lenet5",
                "onecycle",
                20,
                1000,
            )


@pytest.mark.parametrize(
    ("experiment", "model", "regularizers"),
    [
        ("lenet5_best", "lenet5", ["l2", "dropout", "augment", "label_smoothing", "elastic", "ema"]),
        ("mlp_best", "mlp", ["l2", "dropout", "augment", "label_smoothing", "elastic", "ema"]),
    ],
)
def test_the_best_recipes_train_three_seeds_on_the_whole_training_split(
    compose_hydra, compose, experiment, model, regularizers
):
    jobs = expanded_jobs(compose_hydra, experiment)

    assert jobs == [["trainer.seed=1"], ["trainer.seed=2"], ["trainer.seed=3"]], "the confirmation's seeds"
    assert str(compose_hydra([f"experiment={experiment}"]).hydra.mode) == "RunMode.MULTIRUN"
    cfg = compose([f"experiment={experiment}"])
    validate(cfg)
    assert cfg.model.name == model and list(cfg.regularizer) == regularizers
    assert cfg.data.validation_size == 0, "chosen on a validation split, then trained on all training images"

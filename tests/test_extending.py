"""docs/extending.md's recipe, followed for real: an optimizer added as one YAML file in a config folder of
one's own trains through train.py like a shipped one, and the schema it names checks it."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR, job_runs, run_script
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from mnist_exp import record, schema
from mnist_exp.validation import ConfigError, validate

# The recipe's example, as docs/extending.md gives it: torch's AdamW, which takes Adam's settings.
ADAMW = """\
defaults:
  - /adam_schema@_here_  # the settings Adam has (lr, betas), with their types and ranges
  - _self_

_target_: torch.optim.AdamW
_partial_: true
name: adamw
lr: 0.001
betas: [0.9, 0.999]
"""


@pytest.fixture
def my_conf(tmp_path):
    (tmp_path / "my_conf" / "optimizer").mkdir(parents=True)
    (tmp_path / "my_conf" / "optimizer" / "adamw.yaml").write_text(ADAMW)
    return tmp_path / "my_conf"


def test_an_optimizer_added_as_a_yaml_file_trains_through_train_py(project_dir, my_conf):
    result = run_script(
        "train.py",
        "-m",
        "--config-dir",
        str(my_conf),
        "optimizer=adam,adamw",
        "hydra/launcher=basic",  # the recipe, not the launcher, is under test
        "regularizer=l2",
        "regularizer.l2.weight_decay=0.1",  # large, so Adam's L2 and AdamW's decoupled decay differ visibly
        *("model=mlp", "trainer.epochs=1", "trainer.threads=1"),
        *("data.source=sample", "data.limit_train=256", "data.limit_test=100"),
        cwd=project_dir,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    runs = {run.data.params["optimizer.name"]: run for run in job_runs(f"sqlite:///{project_dir}/mlflow.db")}
    assert set(runs) == {"adam", "adamw"}
    assert all(run.info.status == "FINISHED" for run in runs.values())
    assert runs["adamw"].data.tags[record.VARIANT] == "mlp/l2/adamw"
    assert "_target_" not in str(runs["adamw"].data.params)  # how it is built is not a setting
    # The same settings, so only the class its _target_ names can make the numbers differ.
    assert runs["adamw"].data.metrics["train_loss"] != runs["adam"].data.metrics["train_loss"]


def test_the_added_optimizer_is_checked_by_the_schema_it_names(my_conf):
    schema.register()

    def composed(*overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", [f"hydra.searchpath=[file://{my_conf}]", "optimizer=adamw", *overrides])

    validate(composed())
    with pytest.raises(ConfigError, match=r"optimizer\.lr=0\.0 is out of range: must be > 0"):
        validate(composed("optimizer.lr=0"))
    with pytest.raises(ConfigCompositionException, match="Could not override 'optimizer.momentum'"):
        composed("optimizer.momentum=0.9")  # an SGD setting: Adam's schema has no such key

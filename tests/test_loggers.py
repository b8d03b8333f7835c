"""Experiment tracking: every logger gets the run's config, its metrics and the review's figures, and holds them on
disk when `train()` returns. Read back from each logger's own store: an MLflow SQLite database, a W&B offline run,
TensorBoard event files, CSV files."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from omegaconf import OmegaConf
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lightning_meta.config import check_node, load_config, signature_params
from lightning_meta.errors import ConfigError
from lightning_meta.loggers import close, finish, flatten, log_config, make_loggers, param_text
from lightning_meta.run import train

if TYPE_CHECKING:
    from wandb.wandb_run import Run  # only for type checkers, like WandbLogger's own annotation

RUN = [
    "data=sinusoid", "model.hidden=[8,8]", "trainer.max_steps=4", "trainer.val_check_interval=2",
    "data.val_episodes=2", "data.test_episodes=2", "data.eval_batch_size=2", "data.meta_batch_size=2",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
]  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


def run(tmp_path: Path, *overrides: str) -> tuple[Path, dict, dict]:
    """A 4-step sine run into tmp_path/run: (run directory, test metrics, the saved config)."""
    out = tmp_path / "run"
    metrics = train(load_config([*RUN, *overrides, f"output_dir={out}"]))
    config = OmegaConf.to_container(OmegaConf.load(out / "config.yaml"))
    assert set(metrics) >= {"test/mse", "test/episodes"}
    return out, metrics, config


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> str:
    """One SQLite tracking store for the module (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_mlflow_run_holds_the_config_metrics_and_artifacts(tmp_path, mlflow_db):
    MlflowClient = pytest.importorskip("mlflow").MlflowClient

    art = tmp_path / "artifacts"
    out, metrics, config = run(
        tmp_path, "logger=mlflow", f"logger.tracking_uri={mlflow_db}", f"logger.artifact_location={art}",
        "logger.experiment_name=run_test", "tags=[smoke,sines]",
    )  # fmt: skip
    client = MlflowClient(mlflow_db)
    experiment = client.get_experiment_by_name("run_test")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    # Parameters: the whole config under the override keys, and nothing else (not the algorithm's arguments).
    params = found.data.params
    assert params == {key: param_text(value) for key, value in flatten(config).items()}
    assert params["data.ways"] == "1" and params["data.meta_batch_size"] == "2" and params["model.hidden"] == "[8, 8]"
    assert params["algorithm.inner.lr"] == str(config["algorithm"]["inner"]["lr"]) and params["ckpt_path"] == "null"
    assert params["selection.logger"] == "mlflow" and params["output_dir"] == str(out)
    assert {"smoke", "sines"} <= set(found.data.tags)
    # Metrics: the test's, and every training step's.
    assert found.data.metrics["test/mse"] == pytest.approx(metrics["test/mse"])
    assert found.data.metrics["test/episodes"] == 2.0
    assert [m.step for m in client.get_metric_history(found.info.run_id, "train/query_loss")] == [0, 1, 2, 3]
    # Artifacts: config.yaml as written, the review's figures at each validation and the test.
    run_id = found.info.run_id
    assert {a.path for a in client.list_artifacts(run_id)} >= {"config.yaml", "val", "test"}
    assert Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text() == (
        (out / "config.yaml").read_text()
    )
    figures = [a.path for a in client.list_artifacts(run_id, "val/episode")]
    assert figures == ["val/episode/step_000002.png", "val/episode/step_000004.png"]
    assert [a.path for a in client.list_artifacts(run_id, "test/episode")] == ["test/episode/step_000004.png"]
    assert Path(client.download_artifacts(run_id, figures[0], str(tmp_path))).read_bytes().startswith(PNG)
    assert not (out / "mlruns").exists()  # the store is the configured one, not the run directory


def test_mlflow_params_are_batched_and_cut_to_mlflow_limits(tmp_path, mlflow_db):
    MlflowClient = pytest.importorskip("mlflow").MlflowClient
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    wide = {f"k{i:03d}": i for i in range(3 * MAX_PARAMS_TAGS_PER_BATCH + 7)}
    config = {"group": wide, "long": "x" * (MAX_PARAM_VAL_LENGTH + 100), "tags": ["a"]}
    logger = MLFlowLogger(experiment_name="limits", tracking_uri=mlflow_db, artifact_location=str(tmp_path))
    log_config([logger], config)
    close([logger])
    params = MlflowClient(mlflow_db).get_run(logger.run_id).data.params
    assert len(params) == len(wide) + 2 and params["group.k306"] == "306"
    assert params["long"] == "x" * MAX_PARAM_VAL_LENGTH and params["tags"] == '["a"]'


def wandb_records(path: Path):
    """The records of a W&B run file (`run-<id>.wandb`): a 7-byte header (":W&B", magic, version), then LevelDB's
    log format: 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type: full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the block's end
            pos += block - pos % block
            continue
        parts, pos = parts + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full or last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def test_wandb_offline_run_holds_the_config_metrics_and_figures(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("config", "cache", "data"):  # W&B's folders in the home directory, here under tmp_path
        monkeypatch.setenv(f"WANDB_{name.upper()}_DIR", str(tmp_path / name))
    out, metrics, config = run(tmp_path, "logger=wandb", "logger.offline=true", "tags=[smoke]")
    (folder,) = (out / "wandb").glob("offline-run-*")  # the run's folder, under the run directory
    (path,) = folder.glob("run-*.wandb")
    logged, summary, history, artifacts, tags = {}, {}, [], [], set()
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            logged.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "summary":
            summary.update({"/".join(i.nested_key or [i.key]): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "history":
            history.append({"/".join(i.nested_key or [i.key]): json.loads(i.value_json) for i in record.history.item})
        elif kind == "artifact":
            artifacts.append((record.artifact.type, [entry.path for entry in record.artifact.manifest.contents]))
        elif kind == "run":
            tags.update(record.run.tags)
    assert {k: v for k, v in logged.items() if not k.startswith("_")} == config  # the config, not the algorithm's
    assert logged["data"]["meta_batch_size"] == 2 and logged["algorithm"]["inner"] == config["algorithm"]["inner"]
    assert summary["test/mse"] == pytest.approx(metrics["test/mse"]) and summary["trainer/global_step"] == 4
    assert [row["trainer/global_step"] for row in history if "train/query_loss" in row] == [0, 1, 2, 3]
    figures = [row["trainer/global_step"] for row in history if "val/episode/_type" in row]
    assert figures == [2, 4] and all(row["val/episode/_type"] == "images/separated" for row in history
                                     if "val/episode/_type" in row)  # fmt: skip
    assert len(list((folder / "files" / "media" / "images" / "val").glob("episode_*.png"))) == 2
    assert ("config", ["config.yaml"]) in artifacts and "smoke" in tags


def hparams_record(log_dir: Path) -> tuple[dict, dict[str, list[tuple[int, float]]]]:
    """TensorBoard's HParams values and every scalar (tag -> [(step, value)]) of a log folder's event files."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = {k: v.number_value if v.HasField("number_value") else v.string_value
              for k, v in start.session_start_info.hparams.items()}  # fmt: skip
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return values, scalars


def test_tensorboard_end_of_run_record_is_on_disk_every_time(tmp_path):
    """What `train` does at the end, ten times: Lightning finalizes the logger after the test (closing the writer),
    then `finish` writes the HParams record and the test scalars, which must be on disk when it returns."""
    config = {"data": {"ways": 5, "shots": 1}, "algorithm": {"inner": {"lr": 0.4}}}
    metrics = {"test/acc": 0.75, "test/acc_ci95": 0.1}
    for i in range(10):
        logger = TensorBoardLogger(save_dir=str(tmp_path / str(i)), name="tensorboard", version="",
                                   default_hp_metric=False)  # fmt: skip
        log_config([logger], config)
        logger.log_metrics({"train/query_loss": 1.0}, step=3)
        logger.finalize("success")  # Lightning's teardown after trainer.test
        finish([logger], config, metrics, step=4)
        values, scalars = hparams_record(Path(logger.log_dir))
        assert values == {"data/ways": 5, "data/shots": 1, "algorithm/inner/lr": 0.4}, i
        assert scalars["test/acc"] == [(4, 0.75)] and scalars["train/query_loss"] == [(3, 1.0)], i
        assert logger.experiment.all_writers is None  # closed: nothing left in a queue


def test_tensorboard_end_of_run_record_is_on_disk_after_each_of_ten_runs(tmp_path):
    """The same through `train`, ten 2-step runs in a row: each one's event files hold the HParams record and the
    last test scalars when `train` returns (before, the record sat unflushed in a writer opened after Lightning had
    closed the logger, and was missing from about half of the runs)."""
    for i in range(10):
        out = tmp_path / str(i)
        argv = [*RUN, "trainer.max_steps=2", f"seed={i}", f"output_dir={out}"]
        metrics = train(load_config(argv))
        values, scalars = hparams_record(out / "tensorboard")
        assert values["seed"] == i and values["data/meta_batch_size"] == 2, i
        assert scalars["test/mse"][-1] == (2, pytest.approx(metrics["test/mse"])), i


def test_many_loggers_each_hold_the_run(tmp_path):
    out, metrics, config = run(tmp_path, "logger=many")
    # TensorBoard: the HParams record, the test scalars beside it, the figures
    values, scalars = hparams_record(out / "tensorboard")
    assert values["data/meta_batch_size"] == 2 and values["selection/logger"] == "many"
    assert scalars["test/mse"][-1] == (4, pytest.approx(metrics["test/mse"]))
    images = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in images.Images("val/episode")] == [2, 4]
    assert OmegaConf.to_container(OmegaConf.load(out / "tensorboard" / "hparams.yaml")) == config
    # CSV: the config as hparams.yaml, every step's scalars and the test's
    assert OmegaConf.to_container(OmegaConf.load(out / "csv" / "hparams.yaml")) == config
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows if r["train/query_loss"]] == [0, 1, 2, 3]
    assert [float(r["test/mse"]) for r in rows if r["test/mse"]] == [pytest.approx(metrics["test/mse"])]


def test_make_loggers_fills_the_run_folder_not_a_shared_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own default store, for this check only
    out = tmp_path / "run"
    node = OmegaConf.create({
        "tb": {"_target_": "pytorch_lightning.loggers.TensorBoardLogger", "name": "tb", "version": ""},
        "csv": {"_target_": "pytorch_lightning.loggers.CSVLogger", "save_dir": str(tmp_path / "own")},
        "fabric": {"_target_": "lightning_fabric.loggers.CSVLogger", "name": "fabric"},
        "mlflow": {"_target_": "pytorch_lightning.loggers.MLFlowLogger", "tracking_uri": None},
        "off": None,
    })  # fmt: skip
    tb, own, fabric, mlflow = make_loggers(node, out)
    assert Path(tb.log_dir) == out / "tb" and own.save_dir == str(tmp_path / "own")
    assert fabric.root_dir == str(out)  # root_dir: Fabric's name for save_dir
    assert isinstance(own, CSVLogger) and mlflow.save_dir == "./mlruns"  # its own default, not the run directory
    assert make_loggers(None, out) == [] and make_loggers(OmegaConf.create({"_target_": None}), out) == []


class _Tracker:
    def __init__(self, experiment: Run | None = None, offline: bool = False, name: str | None = None) -> None:
        pass


def test_signature_params_keeps_an_annotation_only_type_checkers_can_resolve():
    params = signature_params(_Tracker)
    assert params["experiment"].annotation == "Run | None"  # as written: any value fits
    assert params["offline"].annotation is bool and params["name"].annotation == str | None  # resolved as ever
    with pytest.raises(ConfigError, match="logger.offline='yes' has the wrong type; .* expects bool"):
        check_node(OmegaConf.create({"_target_": f"{__name__}._Tracker", "offline": "yes"}), "logger")
    cfg = load_config(["logger=wandb", "logger.offline=true", "logger.name=x"])
    assert cfg.logger.offline is True and cfg.logger.project == "lightning_meta"
    with pytest.raises(ConfigError, match="logger.offline='maybe' has the wrong type"):
        load_config(["logger=wandb", "logger.offline=maybe"])

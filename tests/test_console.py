"""What a person sees: live progress, a quiet terminal, summaries that lead to the UI, datasets and
system metrics in MLflow."""

import io
import json
import logging
import re
import sys
import urllib.parse
import urllib.request

import pytest
from helpers import CONTRACT_METRICS, FASHION_MNIST_DIR, FLOAT16_METRICS, QUICK_INFER, mlflow_server, run_pipeline

from pipeline import console
from pipeline.core import data

# Lines that are not ours: TensorFlow's C++ logging, absl, CUDA stubs, MLflow's prints and progress bars.
CHATTER = re.compile(r"I0000|E0000|W0000|absl::InitializeLog|cudart_stub|cuda_platform|cuInit|oneDNN custom"
                     r"|Downloading artifacts|Validating input example|font cache|triggered tf.function retracing"
                     r"|Successfully registered model|Created version|UserWarning|fully_quantize|XNNPACK delegate")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_off_a_terminal_is_plain_lines_at_most_every_interval(caplog):
    clock = FakeClock()
    progress = console.Progress("mlp-float32-bs64", every_seconds=30, interactive=False, clock=clock)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        for second, step in ((0, 50), (10, 100), (29, 150), (31, 200), (45, 250), (62, 300), (70, 350), (75, 400)):
            clock.now = 100.0 + second
            progress(step, 400, step // 300, 0.5, 12345.0)
    lines = [record.getMessage() for record in caplog.records]
    # The first call starts the clock; then a line once 30 s have passed, and one at the end.
    # 150 steps in 31 s: 4.84 steps/s, 200 to go, 41 s; then 250 in 62 s, 100 to go, 25 s.
    assert lines == [
        "mlp-float32-bs64: step 200/400, epoch 1, loss 0.5000, 12,345 examples/s, ETA 0:41",
        "mlp-float32-bs64: step 300/400, epoch 2, loss 0.5000, 12,345 examples/s, ETA 0:25",
        "mlp-float32-bs64: step 400/400, epoch 2, loss 0.5000, 12,345 examples/s",
    ]
    assert not any("\r" in line or "\x1b" in line for line in lines)


def test_progress_on_a_terminal_updates_one_bar(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    progress = console.Progress("cnn-float32-bs256", interactive=True)
    for step in (10, 20, 30):
        progress(step, 30, 0, 0.25, 999.0)
    assert (progress.bar.n, progress.bar.total) == (30, 30) and "loss 0.2500" in str(progress.bar)
    progress.close()
    assert "cnn-float32-bs256" in stream.getvalue() and "\r" in stream.getvalue()  # one line, redrawn


def test_mlflow_prints_are_dropped_only_while_quiet(monkeypatch, capsys):
    monkeypatch.setattr(console, "quiet", True)
    with console.without_mlflow_prints():
        print("Successfully registered model 'x'.", file=sys.stderr)
        print("Created version '3' of model 'x'.", file=sys.stderr)
        print("something else", file=sys.stderr)
    monkeypatch.setattr(console, "quiet", False)
    with console.without_mlflow_prints():
        print("Created version '4' of model 'x'.", file=sys.stderr)
    assert capsys.readouterr().err == "something else\nCreated version '4' of model 'x'.\n"


def test_only_the_retracing_warning_of_tensorflow_is_dropped():
    records = [logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, message, None, None) for message in (
        "5 out of the last 5 calls to <function train_call> triggered tf.function retracing. Tracing is expensive",
        "Skipping variable loading for optimizer 'adam'")]
    assert [console._not_a_retracing_warning(record) for record in records] == [False, True]


def test_console_lines_are_short_and_mark_warnings():
    formatter = console.ConsoleFormatter()
    info = logging.LogRecord("pipeline", logging.INFO, __file__, 1, "hello", None, None)
    warning = logging.LogRecord("pipeline", logging.WARNING, __file__, 1, "careful", None, None)
    assert re.fullmatch(r"\d\d:\d\d:\d\d hello", formatter.format(info))
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING careful", formatter.format(warning))


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.fresh_store  # a new store's migrations print too: what a user sees first
def test_a_two_by_two_sweep_finishes_every_job_prints_our_lines_only_and_verbose_brings_the_rest_back(
        tmp_path, store, real_data):
    # As a user runs it: without the TF_CPP_MIN_LOG_LEVEL this suite sets for its own output (the pipeline's
    # default silences TensorFlow's C++ errors too, such as emulated float16's oneDNN fallback notes).
    result = run_pipeline(["-m", "precision=float32,mixed_float16", "data.batch_size=64,128", *real_data,
                           "train.max_steps=60", "train.jit_compile=step", *QUICK_INFER, *store.overrides],
                          cwd=tmp_path, environment={"TF_CPP_MIN_LOG_LEVEL": None})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    _, runs = store.sweep()
    assert sorted((run.data.params["precision.policy"], run.data.params["data.batch_size"]) for run in runs) == [
        ("float32", "128"), ("float32", "64"), ("mixed_float16", "128"), ("mixed_float16", "64")]
    for run in runs:
        assert run.info.status == "FINISHED"
        float16 = run.data.params["precision.policy"] == "mixed_float16"
        assert CONTRACT_METRICS | (FLOAT16_METRICS if float16 else set()) <= run.data.metrics.keys(), run.info.run_name
        assert run.data.metrics["infer/agreement"] >= 0.99
    assert len(list((tmp_path / "multirun").rglob("saved_model.pb"))) == 4  # one export per job
    assert not CHATTER.findall(output), CHATTER.findall(output)
    # 60 steps are a call of 50 and one of 10, both compiling: no steady rate to show yet.
    assert len(re.findall(r"mlp-\w+-bs\d+: step 60/60, epoch 1, loss \d\.\d{4}$", output, re.MULTILINE)) == 4
    assert len(re.findall(r"mlp-\w+-bs\d+: eval accuracy 0\.\d{4}, [\d,]+ train examples/s", output)) == 4
    assert "mixed_float16 vs float32, mlp, batch 64, 1 seed: accuracy " in output
    # The sweep's link: its jobs (a search on their parent run) in the chart view.
    assert re.search(r"runs:   http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?workflowType=machine_learning"
                     r"&searchFilter=tags\.mlflow\.parentRunId%20%3D%20%27\w+%27\S*&compareRunsMode=CHART  "
                     r"\(serve the UI first: mlflow ui --backend-store-uri sqlite:///", output)

    verbose = run_pipeline([*real_data, "train.max_steps=20", "verbose=true", *QUICK_INFER, *store.overrides],
                           cwd=tmp_path)
    assert verbose.returncode == 0 and CHATTER.search(verbose.stdout + verbose.stderr)


@pytest.mark.e2e
def test_the_printed_url_opens_the_run_with_its_datasets_and_system_metrics(tmp_path, real_data):
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts") as url:
        result = run_pipeline([*real_data, "train.max_steps=100", f"tracking.uri={url}", "tracking.artifact_root=null",
                               "tracking.system_metrics=true", "tracking.system_metrics_interval=0.2",
                               "tracking.registered_model=null", *QUICK_INFER], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        (printed,) = re.findall(r"run:   (\S+)", result.stdout + result.stderr)
        assert printed.startswith(f"{url}/#/experiments/") and "(serve the UI" not in result.stdout  # a server
        assert _get(printed.split("#")[0]).startswith("<!doctype html>")  # the UI itself answers
        experiment_id, run_id = re.fullmatch(rf"{url}/#/experiments/(\d+)/runs/(\w+)\?workflowType=machine_learning",
                                             printed).groups()
        run = json.loads(_get(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}"))["run"]
    assert run["info"]["experiment_id"] == experiment_id and run["info"]["status"] == "FINISHED"
    inputs = {entry["tags"][0]["value"]: entry["dataset"] for entry in run["inputs"]["dataset_inputs"]}
    for context, split in (("training", "train"), ("testing", "test")):
        dataset = inputs[context]
        assert dataset["name"] == f"fashion_mnist-{split}"
        assert dataset["digest"] == data.read_idx_split(FASHION_MNIST_DIR, split).digest
        assert str(FASHION_MNIST_DIR) in dataset["source"]
    metrics = {metric["key"] for metric in run["data"]["metrics"]}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= metrics


def _get(address: str) -> str | None:
    try:
        with urllib.request.urlopen(urllib.parse.quote(address, safe=":/?=&#"), timeout=10) as response:
            return response.read().decode()
    except OSError:
        return None

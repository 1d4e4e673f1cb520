"""What a person sees in the terminal: our own lines, live training progress, and summaries that
lead on to the MLflow UI. Third-party chatter is silenced at its source unless `verbose=true`.
"""

import contextlib
import io
import logging
import os
import sys
import time

logger = logging.getLogger("pipeline")

# Read by TensorFlow, absl and MLflow when they are imported: set before any of them is.
_QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow's C++ start-up lines, oneDNN notes, CUDA stubs on a CPU machine
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Validating input example", "Creating initial MLflow database tables"
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # "Downloading artifacts" bars after every logged model
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # "View run ... at" per run ended on a server: our summary links
}
_QUIET_LOGGERS = {"mlflow": logging.WARNING, "alembic": logging.WARNING, "matplotlib": logging.ERROR,
                  "absl": logging.ERROR, "h5py": logging.ERROR, "tensorflow": logging.WARNING,
                  # A server that stopped answering: urllib3 warns at each retry, MLflow's queue at each failed
                  # batch; the job says it once (pipeline.tracking.offline).
                  "urllib3": logging.ERROR, "mlflow.utils.async_logging": logging.CRITICAL}
_MLFLOW_PRINTS = ("Successfully registered model", "Registered model", "Created version")
quiet = False  # set by setup()


def setup(verbose: bool) -> None:
    """Quiet by default; `verbose` leaves every library's output as it is, for debugging."""
    if verbose:
        return
    for name, value in _QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger("tensorflow").addFilter(_not_a_retracing_warning)
    global quiet
    quiet = True


def _not_a_retracing_warning(record: logging.LogRecord) -> bool:
    """TensorFlow warns when 5 of the last 10 calls of functions with the same code traced. Each job builds
    its own training call (a new model, new variables), and the jit probe builds one per mode, so calls
    of `train_call` in a sweep or a probe trace once per program by design: a false alarm here. Only
    this message is dropped; every other TensorFlow warning passes."""
    return "triggered tf.function retracing" not in record.getMessage()


def import_tensorflow() -> None:
    """Imports TensorFlow and starts its devices; while quiet, without its C++ start-up lines.

    TensorFlow's C++ logging goes through absl, which writes everything logged before
    absl::InitializeLog() straight to the process's stderr whatever TF_CPP_MIN_LOG_LEVEL says
    (oneDNN notes, "Could not find cuda drivers", cuInit errors on a machine without a GPU). Those
    come at import and at the first device query.
    """
    if "tensorflow" in sys.modules:
        return
    with native_stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()


@contextlib.contextmanager
def native_stderr_silenced():
    """While quiet, points the process's stderr file descriptor at /dev/null for the block.

    For C++ code that writes there directly, which no log level or environment variable reaches:
    absl before its InitializeLog(), TensorFlow's LiteRT converter ("fully_quantize: 0, ...") and
    LiteRT's interpreter ("Created TensorFlow Lite XNNPACK delegate"). Errors still arrive as exceptions.
    """
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def without_mlflow_prints():
    """Drops the lines MLflow prints outside logging ("Successfully registered model", "Created version
    '3' of model", ...) while quiet: the job's summary names the version. Anything else passes through."""
    if not quiet:
        yield
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        for line in captured.getvalue().splitlines(keepends=True):
            if not line.startswith(_MLFLOW_PRINTS):
                sys.stderr.write(line)


class Progress:
    """One line per job that follows training, updated once per compiled call.

    On a terminal a tqdm bar: step / total, epoch, current loss, examples/s and ETA. Elsewhere (CI,
    SLURM and Ray logs, joblib workers) a plain log line at most every `every_seconds`, and one at
    the end: no control characters.
    """

    def __init__(self, name: str, every_seconds: float = 30.0, interactive: bool | None = None,
                 clock=time.monotonic) -> None:
        self.name, self.every_seconds, self.clock = name, every_seconds, clock
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.bar, self.started, self.first_step, self.last_line = None, None, None, None

    def __call__(self, step: int, total_steps: int, epoch: int, loss: float, examples_per_sec: float | None,
                 accuracy: float | None = None) -> None:
        """Takes what the training loop already has after a call (no extra host sync): the latest evaluation's
        accuracy too, where it evaluates during training."""
        now = self.clock()
        if self.started is None:  # the first call's end: its compile is behind us
            self.started, self.first_step, self.last_line = now, step, now
        # None until a call has run without compiling: a compiling call's rate would mislead.
        rate_text = f", {examples_per_sec:,.0f} examples/s" if examples_per_sec else ""
        accuracy_text = f", accuracy {accuracy:.4f}" if accuracy is not None else ""
        postfix = f"epoch {epoch + 1}, loss {loss:.4f}{accuracy_text}{rate_text}"
        if self.interactive:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps, desc=self.name, unit="step", leave=False, dynamic_ncols=True,
                                file=sys.stderr)
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        if step < total_steps and now - self.last_line < self.every_seconds:
            return
        self.last_line = now
        rate = (step - self.first_step) / (now - self.started) if now > self.started else 0.0
        eta = f", ETA {_duration((total_steps - step) / rate)}" if rate and step < total_steps else ""
        logger.info("%s: step %d/%d, %s%s", self.name, step, total_steps, postfix, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def print_job_summary(result, links: tuple[str, str | None] | None) -> None:
    """A job's headline figures in one line; with `links`, where to see it in the MLflow UI."""
    figures = [f"eval accuracy {result.accuracy:.4f}" if result.accuracy is not None else None,
               f"{result.examples_per_sec:,.0f} train examples/s (jit_compile={result.jit_compile})"
               if result.examples_per_sec else None,
               f"tensor peak {result.peak_tensor_mb:,.1f} MiB" if result.peak_tensor_mb else None,
               _time_to_target(result.target_summary),
               f"infer p50 {result.latency_ms_p50:.3f} ms" if result.latency_ms_p50 is not None else None]
    logger.info("%s: %s", result.run_name, ", ".join(figure for figure in figures if figure))
    if result.registered:
        logger.info("  model: %s", result.registered)
    if links:
        url, command = links
        logger.info("  run:   %s%s", url, f"  (serve the UI first: {command})" if command else "")


def _time_to_target(summary) -> str | None:
    if summary is None or summary.target is None:
        return None
    if not summary.reached:
        return f"target {summary.target:g} not reached"
    return (f"{summary.target:g} reached in {summary.time_to_target_s:.1f} s ({summary.steps_to_target:,} steps, "
            f"evaluations {summary.evaluation_share:.0%} of the training time)")


class ConsoleFormatter(logging.Formatter):
    """Console lines of a job: "HH:MM:SS message"; warnings and errors say so."""

    def __init__(self) -> None:
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        marker = "" if record.levelno < logging.WARNING else f"{record.levelname} "
        message = f"{self.formatTime(record, self.datefmt)} {marker}{record.getMessage()}"
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return message


def print_sweep_summary(sweep_report, report_dir, links: tuple[str, str | None]) -> None:
    """The end of a sweep: the compact table, sentences per reduced-precision job (accuracy and speed,
    memory), where to look next."""
    from pipeline.analysis import memory, summary, time_to_target

    lines = ["", summary.compact_table(sweep_report.rows), ""]
    lines += [f"WARNING {warning}" for warning in sweep_report.warnings]
    lines += (summary.summary_sentences(sweep_report.rows) + memory.sentences(sweep_report.rows)
              + time_to_target.sentences(sweep_report.rows))
    lines.append(f"report: {report_dir}/report.md (and on the sweep's parent run)")
    url, command = links
    lines.append(f"runs:   {url}" + (f"  (serve the UI first: {command})" if command else ""))
    # Printed, not logged: a parallel launcher's own process has no job logging configured.
    print("\n".join(lines), flush=True)

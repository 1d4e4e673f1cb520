"""Evaluations during training, and the time to a target accuracy as MLPerf Training measures it.

MLPerf's rules (mlcommons/training_policies, training_rules.adoc): a run goes from initialisation to
the quality target; the clock runs through training, compilation and evaluations; initialisation may
stay off it. Here the clock starts at the first training call. auto's probe (which picks the compile
mode, and is cached for later jobs) runs before it, as MLPerf's initialisation may. The figure
"without compilation" takes out what compiling cost: the time the calls that compiled a program spent
over the steady time of their steps, for training calls and evaluations alike.
"""

import dataclasses
import statistics


@dataclasses.dataclass
class Evaluation:
    """One evaluation during training."""

    step: int  # optimizer steps taken before it
    accuracy: float
    elapsed_s: float  # on the clock when it ended
    seconds: float  # its own time
    compiled: bool  # it traced the evaluation program (the job's first, unless an earlier job's was kept)


@dataclasses.dataclass
class TimedCall:
    """A training call as the clock saw it (train.py's step time and warm-up figures are read from these too)."""

    steps: int
    seconds: float
    ended_s: float  # on the clock
    compiled: bool


class Evaluations:
    """When a job evaluates, what it found, and when it first reached its target.

    Evaluations run every train.eval_every_steps steps, or once an epoch when a target is set and no
    cadence is (at the end of the call where one falls due); and after the last step, so the budget's
    end is judged too.
    """

    def __init__(self, target: float | None, every_steps: int | None, stop_at_target: bool, steps_per_epoch: int,
                 split: str) -> None:
        self.target, self.stop_at_target, self.split = target, stop_at_target, split
        self.every = every_steps or (steps_per_epoch if target is not None else None)
        self.done: list[Evaluation] = []
        self.reached: Evaluation | None = None

    @property
    def metric(self) -> str:
        """The metric name of their accuracy: eval/accuracy on the test split, validation/accuracy otherwise."""
        return "eval/accuracy" if self.split == "test" else "validation/accuracy"

    def due(self, steps_before: int, steps_after: int, total_steps: int) -> bool:
        """Whether one falls due in a call that took training from `steps_before` to `steps_after` steps.

        Evaluations run between compiled calls, at the end of the call in which one falls due: splitting
        calls at evaluations would compile programs of other lengths (seconds each under XLA, on the
        clock), and XLA's program for a one-step call rounds differently from its loop, so the cadence
        would change the trained weights. train.steps_per_call is the resolution; an eval_every_steps
        that is a multiple of it evaluates at exactly those steps.
        """
        if not self.every:
            return False
        return steps_after // self.every > steps_before // self.every or steps_after == total_steps

    def record(self, evaluation: Evaluation) -> bool:
        """Keeps `evaluation`; True when training should stop here (the target reached, and stop_at_target)."""
        self.done.append(evaluation)
        if self.target is not None and self.reached is None and evaluation.accuracy >= self.target:
            self.reached = evaluation
        return self.reached is not None and self.stop_at_target

    def summary(self, calls: list[TimedCall], batch_size: int) -> "TargetSummary":
        """The job's figures, once training has ended."""
        steady = [call.seconds / call.steps for call in calls if not call.compiled]
        step_seconds = statistics.median(steady) if steady else 0.0
        steady_evaluations = [evaluation.seconds for evaluation in self.done if not evaluation.compiled]
        evaluation_seconds = statistics.median(steady_evaluations) if steady_evaluations else 0.0

        def compiling_seconds(until_s: float) -> float:
            training = sum(max(0.0, call.seconds - call.steps * step_seconds) for call in calls
                           if call.compiled and call.ended_s <= until_s)
            evaluating = sum(max(0.0, evaluation.seconds - evaluation_seconds) for evaluation in self.done
                             if evaluation.compiled and evaluation.elapsed_s <= until_s)
            return training + evaluating

        clock_s = max([call.ended_s for call in calls] + [evaluation.elapsed_s for evaluation in self.done],
                      default=0.0)
        reached = self.reached
        return TargetSummary(
            target=self.target, split=self.split, metric=self.metric, evaluations=list(self.done),
            time_to_target_s=reached.elapsed_s if reached else None,
            time_to_target_without_compile_s=reached.elapsed_s - compiling_seconds(reached.elapsed_s)
            if reached else None,
            steps_to_target=reached.step if reached else None,
            examples_to_target=reached.step * batch_size if reached else None,
            evaluation_share=sum(evaluation.seconds for evaluation in self.done) / clock_s if clock_s else 0.0,
        )


@dataclasses.dataclass
class TargetSummary:
    """A job's evaluations during training and its time to target (None where it was not reached)."""

    target: float | None
    split: str
    metric: str
    evaluations: list[Evaluation]
    time_to_target_s: float | None
    time_to_target_without_compile_s: float | None
    steps_to_target: int | None
    examples_to_target: int | None
    evaluation_share: float  # of the clock's time, spent evaluating

    @property
    def reached(self) -> bool:
        return self.time_to_target_s is not None

    @property
    def best(self) -> Evaluation | None:
        return max(self.evaluations, key=lambda evaluation: evaluation.accuracy, default=None)

    def metrics(self) -> dict[str, float]:
        """The summary metrics (the evaluations themselves are logged as histories when they happen)."""
        metrics = {}
        if self.evaluations:
            metrics |= {"train/evaluations": len(self.evaluations), "train/evaluation_share": self.evaluation_share,
                        "train/evaluation_seconds": sum(evaluation.seconds for evaluation in self.evaluations)}
        if self.reached:
            metrics |= {"train/time_to_target_s": self.time_to_target_s,
                        "train/time_to_target_without_compile_s": self.time_to_target_without_compile_s,
                        "train/steps_to_target": self.steps_to_target,
                        "train/examples_to_target": self.examples_to_target}
        return metrics

    def tags(self) -> dict[str, str]:
        if not self.evaluations:
            return {}
        tags = {"train.evaluation_split": self.split, "train.evaluation_metric": self.metric}
        if self.target is not None:
            tags["train.target_reached"] = str(self.reached).lower()
        return tags

"""The promotion rule: which of a sweep's registered versions becomes the champion, and why.

rule.accuracy_test=point: among the versions whose eval accuracy is within rule.accuracy_tolerance
of the best float32 job and whose export parity (infer/agreement) is at least rule.min_agreement,
take the best rule.metric (default: inference throughput).

rule.accuracy_test=interval (for sweeps with seed repeats): a configuration (model, policy, batch
size, learning rate) qualifies when the upper end of the 95 % interval of its accuracy change
against float32, paired by seed, is above -rule.accuracy_tolerance, and all its versions pass the
parity floor; the configuration with the best mean rule.metric wins, and its version with the
highest eval accuracy becomes the champion.
"""

import dataclasses

from pipeline import PipelineError
from pipeline.analysis import statistics
from pipeline.core import precision


@dataclasses.dataclass
class Candidate:
    """A registered version with the figures the promotion rule reads."""

    version: str
    run_name: str
    policy: str
    accuracy: float | None
    agreement: float | None
    score: float | None
    model: str = "?"
    batch_size: int = 0
    learning_rate: float = 0.0
    seed: str | None = None
    export_format: str = "saved_model"

    @property
    def configuration(self) -> tuple:
        return self.model, self.policy, self.batch_size, self.learning_rate, self.export_format


def format_metric(metric: str, export_format: str) -> str:
    """The name a rule's metric has for a format: infer/latency_ms_p50 is infer/litert_int8/latency_ms_p50
    for a litert_int8 version; a metric that names a format, or no infer/ metric, stays as it is."""
    parts = metric.split("/")
    if export_format == "saved_model" or parts[0] != "infer" or len(parts) != 2:
        return metric
    return f"infer/{export_format}/{parts[1]}"


def candidate(version, run, metric: str) -> Candidate:
    """A registered model version (mlflow.entities.model_registry.ModelVersion) and the run that logged it
    (mlflow.entities.Run), read as the rule sees them, with `metric` as the score.

    A LiteRT version is judged on its own figures; the SavedModel's accuracy is the trained model's.
    """
    metrics, params = run.data.metrics, run.data.params
    export_format = version.tags.get("export.format", "saved_model")
    accuracy = "eval/accuracy" if export_format == "saved_model" else f"infer/{export_format}/accuracy"
    return Candidate(
        version=version.version,
        run_name=run.info.run_name,
        policy=params.get("precision.policy", "?"),
        accuracy=metrics.get(accuracy),
        agreement=metrics.get(format_metric("infer/agreement", export_format)),
        score=metrics.get(format_metric(metric, export_format)),
        export_format=export_format,
        model=params.get("model.name", "?"),
        batch_size=int(params.get("data.batch_size", 0)),
        learning_rate=float(params.get("train.learning_rate", 0)),
        seed=params.get("train.seed"),
    )


class NoChampionError(PipelineError):
    """No version of the sweep satisfies the rule."""


def choose_champion(candidates: list[Candidate], rule) -> tuple[Candidate, str]:
    """Applies the rule (conf/promote.yaml's `rule`); returns the chosen candidate and a sentence saying why.

    The baseline is the float32 SavedModel; rule.formats (null: all) limits the versions that compete.

    Raises:
        NoChampionError: no float32 baseline, or no version passes both thresholds.
    """
    baselines = [candidate.accuracy for candidate in candidates if precision.is_reference(candidate.policy)
                 and candidate.export_format == "saved_model" and candidate.accuracy is not None]
    formats = rule.get("formats")
    if formats:
        candidates = [candidate for candidate in candidates if candidate.export_format in list(formats)]
    if rule.get("accuracy_test", "point") == "interval":
        return _choose_by_interval(candidates, rule)
    if not baselines:
        raise NoChampionError("the sweep registered no float32 version to compare accuracy against; "
                              "include precision=float32 in the sweep")
    floor = max(baselines) - rule.accuracy_tolerance
    qualified = [candidate for candidate in candidates
                 if candidate.accuracy is not None and candidate.accuracy >= floor
                 and _agrees(candidate, rule) and candidate.score is not None]
    if not qualified:
        raise NoChampionError(
            f"no version has eval accuracy >= {floor:.4f} (best float32 {max(baselines):.4f} - "
            f"{rule.accuracy_tolerance}) and infer/agreement >= {rule.min_agreement}; relax rule.* to promote"
        )
    best = (max if rule.higher_is_better else min)(qualified, key=lambda candidate: candidate.score)
    direction = "highest" if rule.higher_is_better else "lowest"
    reason = (f"{direction} {format_metric(rule.metric, best.export_format)} ({best.score:.4g}) among "
              f"{len(qualified)} of {len(candidates)} versions with accuracy >= {floor:.4f} and agreement >= "
              f"{rule.min_agreement}")
    return best, reason


def _agrees(candidate: Candidate, rule) -> bool:
    """Export parity at least the rule's floor: rule.min_agreement_int8 for the int8 formats, which round
    weights and activations, rule.min_agreement for the others."""
    floor = rule.get("min_agreement_int8", rule.min_agreement) if candidate.export_format.endswith("int8") \
        else rule.min_agreement
    return candidate.agreement is not None and candidate.agreement >= floor


def _choose_by_interval(candidates: list[Candidate], rule) -> tuple[Candidate, str]:
    configurations: dict[tuple, list[Candidate]] = {}
    for candidate in candidates:
        configurations.setdefault(candidate.configuration, []).append(candidate)
    baselines = {(model, policy, batch_size, learning_rate): {candidate.seed: candidate for candidate in members}
                 for (model, policy, batch_size, learning_rate, export_format), members in configurations.items()
                 if precision.is_reference(policy) and export_format == "saved_model"}
    if not baselines:
        raise NoChampionError("the sweep registered no float32 version to compare accuracy against; "
                              "include precision=float32 in the sweep")
    qualified = []
    for (model, policy, batch_size, learning_rate, _), members in configurations.items():
        partners = baselines.get((model, precision.reference_of(policy), batch_size, learning_rate), {})
        delta = statistics.mean_interval(member.accuracy - partners[member.seed].accuracy for member in members
                                         if member.seed in partners and member.accuracy is not None
                                         and partners[member.seed].accuracy is not None)
        passes_accuracy = precision.is_reference(policy) or (delta is not None and delta.has_interval
                                                             and delta.high > -rule.accuracy_tolerance)
        passes_parity = all(_agrees(member, rule) for member in members)
        scores = [member.score for member in members if member.score is not None]
        if passes_accuracy and passes_parity and scores:
            qualified.append((sum(scores) / len(scores), members))
    if not qualified:
        raise NoChampionError(
            f"no configuration has an accuracy interval against float32 whose upper end is above "
            f"-{rule.accuracy_tolerance} (it needs 2 or more seeds: train.seed=0,1,2) and infer/agreement >= "
            f"{rule.min_agreement}; relax rule.* or use rule.accuracy_test=point")
    pick = max if rule.higher_is_better else min
    mean_score, members = pick(qualified, key=lambda item: item[0])
    best = max(members, key=lambda member: member.accuracy if member.accuracy is not None else -1.0)
    direction = "highest" if rule.higher_is_better else "lowest"
    reason = (f"{direction} mean {rule.metric} ({mean_score:.4g} over {len(members)} seeds) among {len(qualified)} "
              f"of {len(configurations)} configurations whose accuracy change against float32 has a 95% interval "
              f"reaching above -{rule.accuracy_tolerance}, infer/agreement >= {rule.min_agreement}; its version "
              "with the highest eval accuracy")
    return best, reason

"""Hydra callbacks: work done once around a run or sweep rather than in every job."""

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class TrackingStoreCallback(Callback):
    """Creates the MLflow store and experiment before any job starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from pipeline import tracking

        tracking.prepare_store(config.tracking)

"""Input checks of the served model: bad payloads are named, good ones pass unchanged."""

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from pipeline.serving import classifier


def test_good_images_pass_and_gain_a_channel_axis():
    images = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    for payload in (images, {"image": images}):  # MLflow hands over a named input as a dict
        checked = classifier.validate_images(payload, (28, 28, 1))
        assert checked.shape == (3, 28, 28, 1) and checked.dtype == np.float32
        np.testing.assert_array_equal(checked[..., 0], images)


@pytest.mark.parametrize("images,message", [
    (np.zeros((2, 28, 20, 1)), r"shape \(batch, 28, 28, 1\), got \(2, 28, 20, 1\)"),
    (np.zeros((28, 28)), r"got \(28, 28\)"),
    (np.array([["a"] * 28] * 28), "must be numbers, got dtype <U1"),
    (np.full((1, 28, 28, 1), np.nan), "784 NaN or infinite values"),
    (np.full((1, 28, 28, 1), 255.0), r"scaled to \[0, 1\], got \[255, 255\]"),
    (np.full((1, 28, 28, 1), -0.5), r"got \[-0.5, -0.5\]"),
])
def test_bad_images_are_rejected_with_the_reason(images, message):
    with pytest.raises(MlflowException, match=message) as error:
        classifier.validate_images(images, (28, 28, 1))
    assert error.value.get_http_status_code() == 400

"""Loading a network for a worker child: one thread per pool, OpenCV's included."""

from __future__ import annotations

import cv2

from digits.model.card import SHIPPED_FIELD_DIGITS
from digits.model.inference import Classifier


def test_a_network_loaded_for_one_core_keeps_opencv_to_one_thread():
    """A worker child owns one core: OpenCV's pool would only hand tiny images to a thread that
    waits for the other child's core (``Classifier.load``)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        Classifier.load(SHIPPED_FIELD_DIGITS, threads=1)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)

"""TensorFlow and Keras load without matplotlib (model/quiet.py): a process that reads digits does
not pay for plotting helpers it never calls, and one that draws pictures still can."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PROBE = """
import json, sys
from digits.model import quiet
quiet.install()
{before}
import {first}
loaded = "matplotlib" in sys.modules
from keras.src.visualization import plot_image_gallery
helper_has_pyplot = plot_image_gallery.plt is not None
import matplotlib.pyplot as plt  # a command that draws imports it afterwards, as ever
plt.figure()
print(json.dumps({{"loaded": loaded, "helper_has_pyplot": helper_has_pyplot}}))
"""


def probe(first: str, before: str = "") -> dict:
    code = textwrap.dedent(PROBE.format(first=first, before=before))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("first", ["keras", "tensorflow", "digits.model.inference"])
def test_loading_keras_or_tensorflow_leaves_matplotlib_out_and_importable_after(first: str):
    assert probe(first) == {"loaded": False, "helper_has_pyplot": False}


def test_a_process_that_loaded_matplotlib_first_keeps_it_for_keras_too():
    assert probe("keras", before="import matplotlib.pyplot") == {
        "loaded": True,
        "helper_has_pyplot": True,
    }

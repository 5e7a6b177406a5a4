"""The synthetic domains: what each shift changes and what it leaves alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from probda_deploy.data.synthetic import DOMAINS, make_nuclei


def test_haze_adds_light_outside_the_objects_and_leaves_the_labels():
    """Out-of-focus blobs brighten the background unevenly; the objects and their labels are the same."""
    hazy = DOMAINS["haze"]
    clear = replace(hazy, haze=0.0)
    img_h, lab_h = make_nuclei(np.random.default_rng(3), (192, 192), style=hazy)
    img_c, lab_c = make_nuclei(np.random.default_rng(3), (192, 192), style=clear)
    np.testing.assert_array_equal(lab_h, lab_c)
    bg = lab_h == 0
    peak = np.percentile(img_c[~bg], 99)  # both images are scaled to their own maximum: compare relative to it
    rel_h = img_h.astype(float) / np.percentile(img_h[~bg], 99)
    rel_c = img_c.astype(float) / peak
    assert np.percentile(rel_h[bg], 95) > np.percentile(rel_c[bg], 95) + 0.1  # bright haze in the background
    assert np.percentile(rel_h[bg], 5) < np.percentile(rel_c[bg], 5) + 0.05  # ... but not everywhere

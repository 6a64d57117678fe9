"""Fovea: datasets/synthetic — procedural fundus photographs with ICDR grades and lesion boxes.

* :mod:`datasets.synthetic.fundus`: the renderer (``render_fundus`` → ``SyntheticFundus``);
* :mod:`datasets.synthetic.writer`: ``generate`` writes the EyePACS layout plus ``lesions.csv``;
* ``python -m datasets.synthetic``: the command line around ``generate``.

Nothing is imported here, so that the command line can reject bad arguments without loading numpy/OpenCV.
"""

"""Fovea: datasets/synthetic — procedural fundus photographs with their complete DR ground truth.

* :mod:`~datasets.synthetic.fundus`: the renderer (``render_fundus`` -> ``SyntheticFundus``), built from
  :mod:`~datasets.synthetic.anatomy` (field, disc, fovea, quadrants), :mod:`~datasets.synthetic.vessels`
  (vessel tree, beading, IRMA, neovascularisation) and :mod:`~datasets.synthetic.lesions` (plan, placement,
  appearance and masks of the lesions);
* :mod:`~datasets.synthetic.grading`: the ICDR / DME / referable rules the labels are derived with;
* :mod:`~datasets.synthetic.quality`: image-quality artefacts and the gradability truth;
* :mod:`~datasets.synthetic.coco`: COCO RLE masks; :mod:`~datasets.synthetic.writer`: ``generate`` writes the
  folder (EyePACS layout, ground_truth.csv, quality.csv, lesions.json, lesions.csv, optional DICOM via
  :mod:`~datasets.synthetic.dicom`);
* ``python -m datasets.synthetic``: the command line around ``generate``; ``python -m
  datasets.synthetic.stats`` and ``python -m datasets.synthetic.contact_sheet``: statistics and a picture of a set.

Nothing is imported here, so that the command line can reject bad arguments without loading numpy/OpenCV.
See docs/synthetic.md.
"""

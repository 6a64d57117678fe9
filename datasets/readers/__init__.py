"""Dataset readers: every published layout in, one :class:`FundusRecord` list out.

``READERS`` maps a format name to a function ``reader(root) -> list[FundusRecord]``; :func:`read_dataset`
looks the name up. Readers whose dataset publishes splits (``idrid``: train/test; ``ddr``: train/valid/test)
read ``split="train"`` by default and take ``split=`` (see :data:`SPLITS`).

======================  ==================================================================================
format                  layout (module)
======================  ==================================================================================
``eyepacs``             ``trainLabels.csv`` + ``<image>.jpeg`` (:mod:`.eyepacs`)
``aptos``               ``train.csv`` + ``train_images/<id_code>.png`` (:mod:`.aptos`)
``messidor2``           ``messidor_data.csv`` + ``IMAGES/`` (:mod:`.messidor2`)
``idrid``               ``B. Disease Grading/...`` and ``A. Segmentation/...`` (:mod:`.idrid`)
``ddr``                 ``DR_grading/<split>.txt`` + VOC XML lesion boxes (:mod:`.ddr`)
``coco``                a COCO instances JSON of lesion boxes (:mod:`.coco`)
``dicom``               DICOM files + ``grades.csv`` keyed by SOPInstanceUID (:mod:`.dicom_folder`)
``folders``             ``<grade>/<image>`` (:mod:`.folders`)
``synthetic``           ``python -m datasets.synthetic`` output (:mod:`.synthetic`)
======================  ==================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from datasets.readers.aptos import read_aptos
from datasets.readers.coco import read_coco
from datasets.readers.ddr import SPLITS as DDR_SPLITS
from datasets.readers.ddr import read_ddr
from datasets.readers.dicom_folder import read_dicom_folder
from datasets.readers.errors import DatasetError
from datasets.readers.eyepacs import read_eyepacs
from datasets.readers.folders import read_folders
from datasets.readers.idrid import SPLITS as IDRID_SPLITS
from datasets.readers.idrid import read_idrid
from datasets.readers.messidor2 import read_messidor2
from datasets.readers.record import FundusRecord, LesionBox
from datasets.readers.synthetic import read_synthetic

__all__ = ["READERS", "SPLITS", "DatasetError", "FundusRecord", "LesionBox", "read_dataset"]

READERS: dict[str, Callable[[Path], list[FundusRecord]]] = {
    "eyepacs": read_eyepacs,
    "aptos": read_aptos,
    "messidor2": read_messidor2,
    "idrid": read_idrid,
    "ddr": read_ddr,
    "coco": read_coco,
    "dicom": read_dicom_folder,
    "folders": read_folders,
    "synthetic": read_synthetic,
}

#: The published splits of the formats that have them; the first is the reader's default.
SPLITS: dict[str, tuple[str, ...]] = {"idrid": IDRID_SPLITS, "ddr": DDR_SPLITS}


def read_dataset(root: Path, fmt: str, *, split: str | None = None) -> list[FundusRecord]:
    """Read the dataset at ``root`` in layout ``fmt`` (a key of :data:`READERS`).

    ``split`` selects a published split for the formats in :data:`SPLITS` (``None``: the reader's default);
    for any other format it must be ``None``. Raises :class:`DatasetError` for an unknown format (listing the
    known ones), a split the format does not have, or a dataset that does not match its layout.
    """
    if fmt not in READERS:
        raise DatasetError(f"unknown data format {fmt!r}; known formats: {', '.join(READERS)}")
    if split is None:
        return READERS[fmt](Path(root))
    if fmt not in SPLITS:
        raise DatasetError(f"format {fmt!r} has no published splits (only {', '.join(SPLITS)} do); drop the split")
    if split not in SPLITS[fmt]:
        raise DatasetError(f"format {fmt!r} has the splits {', '.join(SPLITS[fmt])}, not {split!r}")
    return READERS[fmt](Path(root), split=split)  # type: ignore[call-arg]

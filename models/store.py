"""The BentoML model store as Fovea uses it: import an exported model (ONNX + card), ensure the embedded
defaults are present, and resolve a tag to a *verified* model directory.

No pickle is ever written or read: a Fovea model directory holds the ONNX file and its JSON card only
(BentoML's optional ``custom_objects.pkl`` is refused if present).
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException, NotFound

from models.card import CardError, ModelCard, read_verified, verify

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
CARD_SUFFIX = ".card.json"
#: Names of the models the service loads, in the order they are imported. The grader is required; the
#: detector and the image-quality model are imported when ``models/default/`` holds them.
DEFAULT_MODELS = ("dr-grader", "lesion-detector", "image-quality")
REQUIRED_MODELS = ("dr-grader",)


def get_exact(tag: str) -> bentoml.Model | None:
    """The stored model of ``tag`` (``name:version``, or ``name`` / ``name:latest`` for the latest), ``None``
    when the store has no such version.

    BentoML's own ``models.get`` also accepts a unique version *prefix*: ``dr-grader:0.1.0`` finds
    ``dr-grader:0.1.0-int8`` when only the int8 model is stored. A model store must never hand out another
    version than the one asked for, so an explicit version must match exactly."""
    version = bentoml.Tag.from_taglike(tag).version
    try:
        model = bentoml.models.get(tag)
    except NotFound:
        return None
    except BentoMLException:  # several versions share the prefix: none of them is the one asked for
        if version in (None, "latest"):
            raise
        return None
    if version not in (None, "latest") and model.tag.version != version:
        return None
    return model


def exact_dir(tag: str) -> Path:
    """The store folder of ``tag`` exactly (:func:`get_exact`); :class:`CardError` naming the tag when the store
    has no such version. What a service serves: ``FOVEA_GRADER_TAG=dr-grader:0.3.0-eyepacs`` must not fall
    back on ``dr-grader:0.3.0-eyepacs-int8`` when only that one is stored, as BentoML's prefix lookup would."""
    model = get_exact(tag)
    if model is None:
        raise CardError(f"the model store has no {tag} (python -m training register --card ... puts it there)")
    return Path(model.path)


def import_model(card_path: Path) -> str:
    """Copy ``<name>.onnx`` + card into the store as ``name:version``; return the tag.

    Idempotent: importing the same file again changes nothing but the stored card, which follows a re-measured
    card of the same file. Importing a *different* file under an existing version is refused (bump the version
    in the training config instead).
    """
    card = ModelCard.load(card_path)
    src = verify(card, card_path.parent)
    existing = get_exact(card.tag)
    if existing is not None:
        stored = ModelCard.load(Path(existing.path) / "card.json")
        if stored.sha256 != card.sha256:
            raise CardError(f"{card.tag} is already in the model store with a different file "
                            f"(sha256 {stored.sha256[:12]}…); bump the version")
        if stored != card:
            # The same file with a re-measured card (a grade rule, served figures): the store's copy follows it,
            # since the card, not the store's metadata, is what serving reads.
            shutil.copyfile(card_path, Path(existing.path) / "card.json")
        return card.tag
    with bentoml.models.create(card.tag, labels=store_labels(card), metadata=store_metadata(card)) as model:
        shutil.copyfile(src, Path(model.path) / card.file)
        shutil.copyfile(card_path, Path(model.path) / "card.json")
    return card.tag


def store_labels(card: ModelCard) -> dict[str, str]:
    """The BentoML labels of a stored model (strings, for ``bentoml models list`` filters): task,
    architecture, preprocessing version and what it was trained on (``synthetic`` when the card's
    intended-use statement says so, as :func:`analysis.render.caption_for` decides the overlay caption)."""
    return {"task": card.task, "architecture": card.architecture,
            "preprocessing": f"{card.preprocessing.name}-v{card.preprocessing.version}",
            "trained-on": "synthetic" if "synthetic" in card.intended_use.lower() else "other"}


def store_metadata(card: ModelCard) -> dict[str, Any]:
    """The BentoML metadata of a stored model: the card's contract and provenance in brief (the card itself
    is stored beside the ONNX file and stays the reference). Non-finite metrics are left out (the store
    writes YAML)."""
    return {
        "sha256": card.sha256, "version": card.version, "file": card.file, "opset": card.opset,
        "preprocessing": f"{card.preprocessing.name}/{card.preprocessing.version}",
        "input_size": card.input.size, "outputs": list(card.outputs), "classes": list(card.classes),
        "operating_points": {op.name: {"threshold": op.threshold, "sensitivity": op.sensitivity,
                                       "specificity": op.specificity} for op in card.operating_points},
        "score_thresholds": {t.name: t.threshold for t in card.score_thresholds},
        "metrics": {k: float(v) for k, v in card.metrics.items() if math.isfinite(v)},
        "metrics_data": card.metrics_data,
        "training_data": card.training.data, "training_command": card.training.command,
        "code_commit": card.training.code_commit, "created": card.created, "intended_use": card.intended_use,
        **({"data_terms": card.training.data_terms} if card.training.data_terms else {}),
    }


def ensure_defaults(default_dir: Path = DEFAULT_DIR) -> list[str]:
    """Make sure each embedded default (name *and* version) is in the store; return the tags newly imported.

    Runs at every start: a pulled repository with a retrained default brings a new version, which becomes
    ``latest``; an unchanged default is a no-op (its sha256 is checked against the stored copy).
    """
    imported = []
    for name in DEFAULT_MODELS:
        card_path = default_dir / f"{name}{CARD_SUFFIX}"
        if name not in REQUIRED_MODELS and not card_path.is_file():
            continue
        # Second tags of a name (``<name>-<what>.card.json``, e.g. the synthetic grader beside a real one) go in
        # first, so that on a fresh store the primary default is the newest, i.e. what ``name:latest`` serves.
        alternates = sorted(default_dir.glob(f"{name}-*{CARD_SUFFIX}"))
        for path in [*alternates, card_path]:
            tag = ModelCard.load(path).tag
            present = get_exact(tag) is not None
            import_model(path)
            if not present:
                imported.append(tag)
    return imported


def load_verified(card_path: Path) -> tuple[ModelCard, bytes]:
    """Read a card (``card.json`` in a store directory, or ``<name>.card.json`` beside an export) and the ONNX
    bytes it describes, verified against its sha256; return ``(card, onnx bytes)``. The caller builds its
    session from these very bytes, so the file cannot change between check and use. A directory may be passed
    for ``card.json``."""
    if card_path.is_dir():
        card_path = card_path / "card.json"
    if any(card_path.parent.glob("*.pkl")):
        # A pickle in a model directory would be unpickled by BentoML on access: never serve such a model.
        raise CardError(f"model directory {card_path.parent.name} contains a pickle; refusing to load it")
    card = ModelCard.load(card_path)
    return card, read_verified(card, card_path.parent)


def main(argv: list[str] | None = None) -> int:
    """``python -m models.store ensure-defaults``: used by ``make serve``."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["ensure-defaults"]:
        print("usage: python -m models.store ensure-defaults", file=sys.stderr)
        return 2
    try:
        tags = ensure_defaults()
    except CardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("imported " + ", ".join(tags) if tags else "default models already in the model store")
    return 0


if __name__ == "__main__":
    sys.exit(main())

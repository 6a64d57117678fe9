"""Training and export end to end on a tiny model: checkpoint contents, resume, ONNX parity, card, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training extras (torch) are not installed")

from models.card import ModelCard, verify  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.export import ParityError, check_parity, load_checkpoint, to_onnx  # noqa: E402
from training.tasks import get_task  # noqa: E402


def test_checkpoint_carries_resolved_config(tiny_export: Path, tiny_config: Path) -> None:
    run = tiny_config.parent / "run"
    ck = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    cfg = json.loads(ck["config"])
    assert cfg["architecture"] == "mobilenet_v3_small" and cfg["input_size"] == 64
    assert ck["command"].startswith("python -m training train")
    assert (run / "history.json").is_file() and (run / "config.json").is_file()
    assert (run / "history.png").stat().st_size > 1000


def test_export_writes_verified_card_with_parity(tiny_export: Path) -> None:
    card = ModelCard.load(tiny_export / "tiny-grader.card.json")
    assert verify(card, tiny_export).name == "tiny-grader.onnx"
    assert card.metrics["max_abs_logit_diff"] <= 1e-4
    assert card.input.size == 64 and card.outputs == ("logits", "cam")
    assert "quadratic_weighted_kappa" in card.metrics and card.metrics["n"] == 20
    assert card.operating_point("referable_dr") is not None
    assert (tiny_export / "tiny-grader.confusion.png").stat().st_size > 1000
    assert (tiny_export / "tiny-grader.history.png").stat().st_size > 1000


def test_onnx_dynamic_batch_matches_torch(tiny_export: Path, tiny_config: Path) -> None:
    import onnxruntime as ort

    model, cfg, _ = load_checkpoint(tiny_config.parent / "run" / "best.pt")
    sess = ort.InferenceSession(str(tiny_export / "tiny-grader.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((3, 3, 64, 64), dtype=np.float32)
    logits, cam = sess.run(None, {"image": x})
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert logits.shape == (3, 5) and cam.shape[:2] == (3, 5)
    assert np.abs(logits - ref).max() <= 1e-4


def test_parity_check_refuses_a_wrong_graph(tiny_config: Path, tiny_export: Path) -> None:
    model, cfg, _ = load_checkpoint(tiny_config.parent / "run" / "best.pt")
    grader = get_task("dr-grading")
    other = to_onnx(grader, model, cfg)
    with torch.no_grad():
        model.head.bias += 1.0  # the torch model now disagrees with the exported bytes
    with pytest.raises(ParityError, match="differ"):
        check_parity(grader, model, cfg, other, np.zeros((1, 3, 64, 64), np.float32))


def test_resume_continues_from_last_epoch(tiny_config: Path, tiny_export: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run = tmp_path / "run"  # a copy: other tests read the shared run's best.pt
    shutil.copytree(tiny_config.parent / "run", run)
    before = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert main(["train", "--config", str(tiny_config), "--out", str(run), "--epochs", "2", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().err
    after = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert after["epoch"] == 1 and len(json.loads(after["history"])) == 2
    # The optimizer continued: its step count grew by one epoch's worth, not restarted from zero.
    steps = lambda ck: max(int(s["step"]) for s in ck["optimizer"]["state"].values())  # noqa: E731
    assert steps(after) == 2 * steps(before)
    assert after["scheduler"]["last_epoch"] == 2 * before["scheduler"]["last_epoch"]


def test_evaluate_cli_prints_metrics(tiny_config: Path, tiny_export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--config", str(tiny_config)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 20 and "quadratic_weighted_kappa" in metrics and "referable_sensitivity" in metrics


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"out: {tmp_path / 'nothing'}\ndata: {{train: {tmp_path / 'none'}, test: {tmp_path / 'none'}}}\n")
    assert main(["export", "--config", str(cfg)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg)]) == 2
    assert "no dataset" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_card_has_intervals_and_the_pointing_game_on_lesion_records(tiny_config: Path, tiny_export: Path,
                                                                     tiny_dataset: Path, tmp_path: Path) -> None:
    from training.data import load_graded
    from training.export import export

    # The default (EyePACS layout) has no lesion ground truth: intervals, but no pointing game.
    card = ModelCard.load(tiny_export / "tiny-grader.card.json")
    m = card.metrics
    assert m["quadratic_weighted_kappa_ci95_low"] <= m["quadratic_weighted_kappa"] <= m["quadratic_weighted_kappa_ci95_high"]
    assert "pointing_game_n" not in m and "no lesion ground truth" in card.metrics_data
    assert "objective ce+emd" in card.metrics_data and card.training.config["objective"] == "ce+emd"

    # The same photographs read as the synthetic layout carry lesion boxes: every referable one with a box plays.
    card = export(tiny_config.parent / "run" / "best.pt", tmp_path, test_root=tiny_dataset, command="test",
                  test_format="synthetic")
    records = load_graded(tiny_dataset, "synthetic", verbose=False)
    playing = sum(r.grade >= 2 and bool(r.lesions) for r in records)
    assert playing > 0 and card.metrics["pointing_game_n"] == playing
    rate = card.metrics["pointing_game_hit_rate"]
    assert 0 <= card.metrics["pointing_game_hit_rate_ci95_low"] <= rate <= card.metrics["pointing_game_hit_rate_ci95_high"] <= 1
    assert 0 <= card.metrics["pointing_game_centre_baseline"] <= 1
    assert card.metrics["n"] == len(records) and f"{playing} referable images with lesion boxes" in card.metrics_data


def test_card_intended_use_follows_the_training_data(tiny_config: Path, tiny_export: Path, tiny_dataset: Path,
                                                     tmp_path: Path) -> None:
    """A model trained on a folder that is not the generator's output gets the research statement, without the
    word "synthetic" (serving keys the overlay caption on it); the synthetic one keeps the synthetic warning."""
    import shutil

    from models.card import RESEARCH_USE, RESEARCH_WARNING, SYNTHETIC_WARNING, statement_kind
    from training.export import export

    assert ModelCard.load(tiny_export / "tiny-grader.card.json").intended_use == SYNTHETIC_WARNING
    plain = tmp_path / "eyepacs"  # the same photographs as a plain EyePACS folder: labels and images only
    plain.mkdir()
    shutil.copy(tiny_dataset / "trainLabels.csv", plain)
    for jpeg in tiny_dataset.glob("*.jpeg"):
        shutil.copy(jpeg, plain)
    ck = torch.load(tiny_config.parent / "run" / "best.pt", map_location="cpu", weights_only=True)
    cfg = json.loads(ck["config"])
    cfg["data"]["train"] = str(plain)
    ck["config"] = json.dumps(cfg)
    torch.save(ck, tmp_path / "best.pt")
    card = export(tmp_path / "best.pt", tmp_path / "out", test_root=None, command="test")
    assert card.intended_use.startswith(RESEARCH_USE) and card.intended_use.endswith(RESEARCH_WARNING)
    assert str(plain) in card.intended_use and statement_kind(card.intended_use) == "research"
    assert card.training.data_terms is None  # the config names no terms


def test_contrast_recipe_research_card(tiny_research_run: tuple[Path, Path]) -> None:
    """A config naming fovea.fundus-contrast, its data and their terms, without a test folder: the card names
    the recipe with its mean/std, carries the terms and the research-use statement, and says its metrics come
    from the patient-disjoint validation split (the same patients training held out)."""
    from models.card import RESEARCH_USE, recipe_of
    from models.preprocess import CONTRAST
    from tests.conftest import TINY_RESEARCH_DATA, TINY_RESEARCH_TERMS
    from training.config import load_config
    from training.data import load_graded, split_by_patient

    cfg_path, export_dir = tiny_research_run
    card = ModelCard.load(export_dir / "tiny-research.card.json")
    verify(card, export_dir)
    assert recipe_of(card) == CONTRAST
    assert (card.preprocessing.name, card.preprocessing.version) == (CONTRAST.name, CONTRAST.version)
    assert (tuple(card.input.mean), tuple(card.input.std)) == (CONTRAST.mean, CONTRAST.std)
    assert card.training.data_terms == TINY_RESEARCH_TERMS and card.training.data.startswith(TINY_RESEARCH_DATA)
    assert card.intended_use.startswith(RESEARCH_USE)
    assert TINY_RESEARCH_DATA in card.intended_use and TINY_RESEARCH_TERMS in card.intended_use
    cfg = load_config(cfg_path)
    _, val = split_by_patient(load_graded(Path(cfg.data.train), "eyepacs", verbose=False), 0.3, cfg.seed)
    assert card.metrics["n"] == len(val)
    assert card.metrics_data.startswith(f"patient-disjoint validation split (30%, seed 0) of {cfg.data.train} "
                                        f"(eyepacs), {len(val)} photographs of ")


def test_evaluate_without_a_test_folder_reads_the_validation_split(tiny_research_run: tuple[Path, Path],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, export_dir = tiny_research_run
    assert main(["evaluate", "--config", str(cfg_path), "--no-report"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == ModelCard.load(export_dir / "tiny-research.card.json").metrics["n"]


def test_param_groups_fine_tune_the_trunk_gently() -> None:
    from models.architectures import build
    from training.engine import param_groups

    model = build("mobilenet_v3_small", num_classes=5)
    [one] = param_groups(model, 1e-3, 1.0)
    assert len(one["params"]) == len(list(model.parameters()))
    trunk, head = param_groups(model, 1e-3, 0.1)
    assert trunk["lr"] == pytest.approx(1e-4) and head["lr"] == 1e-3
    assert len(trunk["params"]) + len(head["params"]) == len(list(model.parameters()))
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}


def test_export_settings_give_the_same_weights_other_views_and_a_version(tiny_export: Path, tiny_config: Path,
                                                                        tmp_path: Path) -> None:
    """``test_time_views`` and ``version`` are read from the config given to export: the views are built into
    the graph, the card lists them and carries the new version, and the training config stays as trained."""
    import onnxruntime as ort

    from models.architectures.classifier import WithCam

    config = tmp_path / "views.yaml"
    config.write_text(tiny_config.read_text().replace("version: 0.0.1", "version: 0.0.2") + "test_time_views: 4\n")
    out = tmp_path / "export"
    assert main(["export", "--config", str(config), "--checkpoint", str(tiny_config.parent / "run" / "best.pt"),
                 "--out", str(out)]) == 0
    card = ModelCard.load(out / "tiny-grader.card.json")
    assert verify(card, out).is_file()
    assert card.version == "0.0.2" and card.test_time_views == ("identity", "rot90", "rot180", "rot270")
    assert card.training.config["version"] == "0.0.1" and card.training.config["test_time_views"] == 1
    assert "test-time views averaged in the graph: identity, rot90, rot180, rot270" in card.metrics_data
    model, _, _ = load_checkpoint(tiny_config.parent / "run" / "best.pt")
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64), dtype=np.float32)
    logits, cam = ort.InferenceSession(str(out / "tiny-grader.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})
    with torch.inference_mode():
        ref_logits, ref_cam = WithCam(model.eval(), 4)(torch.from_numpy(x))
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(cam, ref_cam.numpy(), atol=1e-4, rtol=1e-4)
    # The tiny model answers nearly the same for any input, so check the graph itself: the four views of the
    # image are concatenated into one batch.
    import onnx

    graph = onnx.load(str(out / "tiny-grader.onnx")).graph
    assert any(n.op_type == "Concat" and len(n.input) == 4 for n in graph.node)
    assert ModelCard.load(tiny_export / "tiny-grader.card.json").test_time_views == ("identity",)
    # Other views under the trained version would put another graph under an existing tag: refused.
    config.write_text(tiny_config.read_text() + "test_time_views: 2\n")
    assert main(["export", "--config", str(config), "--checkpoint", str(tiny_config.parent / "run" / "best.pt"),
                 "--out", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused" / "tiny-grader.onnx").exists()

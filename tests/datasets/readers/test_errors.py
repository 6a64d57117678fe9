"""Problems are reported together: first MAX_LISTED listed, the rest counted, where images were sought."""

from __future__ import annotations

import pytest

from datasets.readers.errors import MAX_LISTED, DatasetError, Problems


def test_no_problem_no_error() -> None:
    Problems("x").raise_if_any()


def test_lists_first_ten_and_counts_the_rest() -> None:
    p = Problems("APTOS at /d")
    p.add("/d/train.csv:2", "diagnosis 'x' of image 'a' is not an integer 0-4")
    for i in range(14):
        p.missing(f"/d/train.csv:{i + 3}", f"img{i}", "/d/train_images (extensions tried: .png)")
    with pytest.raises(DatasetError) as info:
        p.raise_if_any()
    lines = str(info.value).splitlines()
    assert lines[0] == "APTOS at /d: 15 problems (14 images not found):"
    assert lines[1] == "  /d/train.csv:2: diagnosis 'x' of image 'a' is not an integer 0-4"
    assert lines[2] == "  /d/train.csv:3: image 'img0' not found"
    assert len([ln for ln in lines if ln.startswith("  /d/")]) == MAX_LISTED
    assert "  ... and 5 more" in lines
    assert lines[-1] == "images were looked for in /d/train_images (extensions tried: .png)"  # once, not 14 times


def test_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)

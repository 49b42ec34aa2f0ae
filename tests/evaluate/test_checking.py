"""Answer checking: exact and normalised match as used for held-out accuracy."""

from __future__ import annotations

import pytest

from smoltune.evaluate.scoring import first_line, is_correct, normalise_answer


@pytest.mark.parametrize(
    ("prediction", "reference", "check", "expected"),
    [
        ("176", "176", "exact", True),
        ("176\nThe sum is 176.", "176", "exact", True),
        ("The answer is 176", "176", "exact", False),
        ("Odd.", "odd", "normalised", True),
        ("7 ,19,  42", "7, 19, 42", "normalised", True),
        ("7, 42, 19", "7, 19, 42", "normalised", False),
        ("anything", "A fox lives here.", "open", None),
        ("", "5", "exact", False),
    ],
)
def test_is_correct(prediction: str, reference: str, check: str, expected: bool | None) -> None:
    assert is_correct(prediction, reference, check) is expected


def test_normalise_and_first_line() -> None:
    assert normalise_answer('  "Even!" ') == "even"
    assert first_line("\n  42 \nmore") == "42"


def test_rouge_l() -> None:
    from smoltune.evaluate.scoring import rouge_l

    assert rouge_l("The cat sat.", "the cat sat") == 1.0
    assert rouge_l("The answer is 7", "7") == pytest.approx(0.4)
    assert rouge_l("a b c d", "a x c y") == pytest.approx(0.5)  # LCS "a c": P = R = 1/2
    assert rouge_l("", "x") == 0.0 and rouge_l("x", "y") == 0.0

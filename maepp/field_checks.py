"""The checks a config field's value gets: each returns None for a good value, else what it must
be, in words (maepp/config_checks.py names the field and the value in front of it)."""

import math


def whole(minimum: int, meaning: str, allow=()):
    def check(value):
        if value in allow and not isinstance(value, bool):
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            return f"must be a whole number of at least {minimum} ({meaning})"
        return None

    return check


def real(meaning: str, low: float, high: float = math.inf, low_open=False, high_open=True):
    def check(value):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < low
            or (low_open and value == low)
            or value > high
            or (high_open and value == high)
        ):
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            return f"must be a finite number in {left}{low}, {high}{right} ({meaning})"
        return None

    return check


def numbers(meaning: str, low: float, low_open=False):
    """A number, or a non-empty list of them to choose from, each checked as real checks one."""
    one = real(meaning, low, low_open=low_open)

    def check(value):
        if not isinstance(value, (tuple, list)):
            return one(value)
        if not value:
            return f"must be a number or a non-empty list of them ({meaning})"
        problems = [problem for problem in map(one, value) if problem]
        return "each value " + problems[0] if problems else None

    return check


def choice(options):
    def check(value):
        return None if value in options else f"use one of {tuple(options)}"

    return check


def flag(value):
    return None if isinstance(value, bool) else "must be True or False"


def text(meaning: str, may_be_empty=True):
    def check(value):
        if not isinstance(value, str) or (not value and not may_be_empty):
            return f"must be {'a' if may_be_empty else 'a non-empty'} string ({meaning})"
        return None

    return check


def pair(meaning: str):
    def check(value):
        if not (
            isinstance(value, (tuple, list))
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        ):
            return f"must be two whole numbers of at least 1 ({meaning})"
        return None

    return check
